"""Tests for models/convert.py: the torch-free .pth reader, the torch / flax-0.3.1 mappings and
parity of converted score_sde_pytorch weights with the reference outputs in ../shared/fixtures.

The .pth files here are written by hand (`_PthWriter`) in the layout torch >= 1.6 uses: a zip
with `<archive>/data.pkl` (protocol-2 pickle, tensors as `_rebuild_tensor_v2` reduces over
persistent storage ids) and raw little/big-endian storages in `<archive>/data/<key>`.
"""

import collections
import importlib
import io
import json
import os
import pathlib
import pickle
import re
import zipfile

import cpu_env
import jax
import ml_collections
import numpy as np
import pytest
from flax import serialization, traverse_util

from models import convert, pth

FIXTURES = ("ncsnpp_ve_small", "ddpmpp_vp_small", "ddpm_small", "ncsnv2_small")
_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.float16): "HalfStorage",
}


# ---------------------------------------------------------------------------------------------
# A torch-free .pth writer.
# ---------------------------------------------------------------------------------------------


class _Global:
    """A global such as `torch._utils._rebuild_tensor_v2`, pickled by name without torch."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires reduce functions to be callable
        raise NotImplementedError


class _Reduce:
    """Pickles as `func(*args)`, the way torch pickles tensors and Parameters."""

    def __init__(self, func: _Global, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            storage_type = _Global("torch", _STORAGE_NAMES[obj.array.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.array.size)
        return None

    def _save_torch_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_torch_global


class _PthWriter:
    """Builds a torch-style zip checkpoint from nested dicts / lists of `tensor(...)`s."""

    def __init__(self):
        self.storages: list[_Storage] = []

    def storage(self, array: np.ndarray) -> _Storage:
        self.storages.append(_Storage(str(len(self.storages)), np.ravel(array)))
        return self.storages[-1]

    def view(self, storage, offset, shape, stride, parameter=False):
        hooks = collections.OrderedDict()
        tensor = _Reduce(
            _Global("torch._utils", "_rebuild_tensor_v2"),
            (storage, offset, tuple(shape), tuple(stride), False, hooks),
        )
        if parameter:
            return _Reduce(_Global("torch._utils", "_rebuild_parameter"), (tensor, True, hooks))
        return tensor

    def tensor(self, array: np.ndarray, parameter=False):
        array = np.ascontiguousarray(array)
        stride = tuple(s // array.itemsize for s in array.strides)
        return self.view(self.storage(array), 0, array.shape, stride, parameter)

    def write(self, path, obj, byteorder="little"):
        buffer = io.BytesIO()
        _TorchPickler(buffer, protocol=2).dump(obj)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", buffer.getvalue())
            z.writestr("archive/byteorder", byteorder)
            for s in self.storages:
                data = s.array.astype(
                    s.array.dtype.newbyteorder("<" if byteorder == "little" else ">")
                )
                z.writestr(f"archive/data/{s.key}", data.tobytes())
            z.writestr("archive/version", "3\n")


def _write_state_dict(path, state_dict, **kwargs):
    writer = _PthWriter()
    obj = collections.OrderedDict((k, writer.tensor(v)) for k, v in state_dict.items())
    writer.write(path, obj, **kwargs)


# ---------------------------------------------------------------------------------------------
# read_pth.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_read_pth_reads_handwritten_checkpoint(tmp_path, byteorder):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    sigmas = np.geomspace(50, 0.01, 7)
    base = np.arange(24, dtype=np.float32)
    writer = _PthWriter()
    shared = writer.storage(base)
    model = collections.OrderedDict(
        [
            ("module.sigmas", writer.tensor(sigmas)),
            ("module.all_modules.0.weight", writer.tensor(w, parameter=True)),
            ("module.idx", writer.tensor(np.array([3, -1], np.int64))),
            # Two views of one storage: a transposed (non-contiguous) one and an offset one.
            ("module.t", writer.view(shared, 0, (4, 6), (1, 4))),
            ("module.tail", writer.view(shared, 20, (2, 2), (2, 1))),
        ]
    )
    ckpt = {
        "model": model,
        "ema": {"decay": 0.999, "num_updates": 5, "shadow_params": [writer.tensor(w + 1)]},
        "step": 7,
    }
    path = tmp_path / "checkpoint_7.pth"
    writer.write(path, ckpt, byteorder=byteorder)

    out = pth.read_pth(path)
    sd = out["model"]
    assert isinstance(sd, collections.OrderedDict) and list(sd) == list(model)
    np.testing.assert_array_equal(sd["module.sigmas"], sigmas)
    assert sd["module.sigmas"].dtype == np.float64
    np.testing.assert_array_equal(sd["module.all_modules.0.weight"], w)
    np.testing.assert_array_equal(sd["module.idx"], [3, -1])
    np.testing.assert_array_equal(sd["module.t"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(sd["module.tail"], base[20:24].reshape(2, 2))
    np.testing.assert_array_equal(out["ema"]["shadow_params"][0], w + 1)
    assert out["step"] == 7 and out["ema"]["decay"] == 0.999


def test_read_pth_keeps_state_dict_metadata(tmp_path):
    writer = _PthWriter()
    sd = collections.OrderedDict(w=writer.tensor(np.ones(3, np.float32)))
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch's state_dict() sets
    writer.write(tmp_path / "m.pth", sd)
    out = pth.read_pth(tmp_path / "m.pth")
    assert out._metadata == {"": {"version": 1}}
    np.testing.assert_array_equal(out["w"], np.ones(3))


class _Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_read_pth_refuses_code_without_running_it(tmp_path):
    sentinel = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Evil(sentinel)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refused global '(posix|nt|os)\.system'"):
        pth.read_pth(tmp_path / "evil.pth")
    assert not sentinel.exists()


def test_read_pth_refuses_storage_overrun(tmp_path):
    writer = _PthWriter()
    storage = writer.storage(np.zeros(4, np.float32))
    writer.write(tmp_path / "bad.pth", {"w": writer.view(storage, 2, (2, 2), (2, 1))})
    with pytest.raises(pickle.UnpicklingError, match="past its storage"):
        pth.read_pth(tmp_path / "bad.pth")


def test_read_pth_refuses_legacy_and_foreign_files(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(pth.LEGACY_MAGIC, protocol=2) + pickle.dumps(1001))
    with pytest.raises(ValueError, match="legacy"):
        pth.read_pth(legacy)
    other = tmp_path / "other.pth"
    other.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a zip-format"):
        pth.read_pth(other)


# ---------------------------------------------------------------------------------------------
# Mapping logic that needs no model.
# ---------------------------------------------------------------------------------------------


ORIGINAL_ORDER = pathlib.Path(__file__).parent / "testdata" / "convert_original_module_order.json"


@pytest.mark.parametrize(
    "config_module",
    [k for k in json.loads(ORIGINAL_ORDER.read_text()) if not k.startswith("_")],
)
def test_module_walk_matches_original_jax_call_order(config_module):
    # Recorded from the original score_sde modules (see the file's "_provenance"); covers
    # Fourier / positional NCSN++, DDPM++, output_skip + input_skip at 256 px, and DDPM.
    expected = json.loads(ORIGINAL_ORDER.read_text())[config_module]
    config = importlib.import_module(config_module).get_config()
    assert convert.MODULE_LISTS[config.model.name](config) == expected


@pytest.mark.parametrize("fixture", FIXTURES[:3])
def test_walk_covers_every_torch_module(shared_dir, fixture):
    config, state_dict, _ = _load_fixture(shared_dir, fixture)
    modules = convert.MODULE_LISTS[config.model.name](config)
    indices = {int(k.split(".")[1]) for k in state_dict if k.startswith("all_modules.")}
    assert indices == set(range(len(modules)))


def test_fit_reports_first_mismatch_path_and_both_shapes():
    template = {"A_0": {"kernel": jax.ShapeDtypeStruct((3, 3, 2, 4), np.float32)}}
    good = {("A_0", "kernel"): (np.zeros((3, 3, 2, 4)), "x")}
    assert convert.fit_to_template(good, template)["A_0"]["kernel"].dtype == np.float32
    with pytest.raises(convert.ConversionError) as e:
        convert.fit_to_template({("A_0", "kernel"): (np.zeros((3, 3, 2, 5)), "t.w")}, template)
    assert "params/A_0/kernel" in str(e.value)
    assert "(3, 3, 2, 5)" in str(e.value) and "(3, 3, 2, 4)" in str(e.value)
    with pytest.raises(convert.ConversionError, match="missing.*A_0/kernel"):
        convert.fit_to_template({}, template)
    extra = {**good, ("B_0", "bias"): (np.zeros(2), "t.b")}
    with pytest.raises(convert.ConversionError, match="does not have.*B_0/bias"):
        convert.fit_to_template(extra, template)


# ---------------------------------------------------------------------------------------------
# Conversion against the models (needs models.get_model).
# ---------------------------------------------------------------------------------------------


def _load_fixture(shared_dir, name):
    folder = shared_dir / "fixtures" / "score_sde_pytorch" / name
    with open(folder / "config.json") as f:
        config = ml_collections.ConfigDict(json.load(f))
    meta = json.loads((folder / "meta.json").read_text())
    if meta["model_name"].startswith("ncsnv2"):
        config.model.torch_compat = True  # what the fixture README prescribes
    state_dict = dict(np.load(folder / "state_dict.npz"))
    return config, state_dict, dict(np.load(folder / "io.npz"))


def _per_sample_rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return np.abs(out - ref).reshape(len(ref), -1).max(1) / np.abs(ref).reshape(len(ref), -1).max(1)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_converted_torch_weights_reproduce_reference_outputs(shared_dir, fixture):
    from models import utils as mutils

    config, state_dict, io_arrays = _load_fixture(shared_dir, fixture)
    variables = convert.from_pytorch(state_dict, config)
    model = mutils.get_model(config)
    labels = io_arrays["labels"]
    labels = labels.astype(np.int32) if labels.dtype.kind == "i" else labels
    with jax.default_matmul_precision("highest"):
        out = model.apply(variables, io_arrays["x_nhwc"], labels, train=False)
    err = _per_sample_rel_err(out, io_arrays["out_nhwc"])
    # Float32 reference noise floor is <= 2.2e-5 relative (fixture README), hence 1e-4.
    assert np.all(err <= 1e-4), f"per-sample max|out-ref|/max|ref| = {err}"


def test_from_pytorch_strips_dataparallel_prefix(shared_dir):
    config, state_dict, _ = _load_fixture(shared_dir, "ddpmpp_vp_small")
    plain = convert.from_pytorch(state_dict, config)
    prefixed = convert.from_pytorch({f"module.{k}": v for k, v in state_dict.items()}, config)
    jax.tree.map(np.testing.assert_array_equal, plain, prefixed)


def test_from_pytorch_takes_ema_shadow_params_and_fourier_w_from_model(shared_dir):
    config, state_dict, _ = _load_fixture(shared_dir, "ncsnpp_ve_small")
    fourier_w = "all_modules.0.W"
    trainable = [k for k in state_dict if k not in ("sigmas", fourier_w)]
    shadow = [state_dict[k] + 1.0 for k in trainable]
    ckpt = {
        "model": {f"module.{k}": v for k, v in state_dict.items()},
        "ema": {"decay": 0.999, "num_updates": 3, "shadow_params": shadow},
        "optimizer": {"state": {}, "param_groups": []},
        "step": 3,
    }
    expected_sd = dict(state_dict, **{k: s for k, s in zip(trainable, shadow)})
    expected = convert.from_pytorch(expected_sd, config)
    jax.tree.map(np.testing.assert_array_equal, convert.from_pytorch(ckpt, config), expected)
    # use_ema=False takes the raw model weights.
    raw = convert.from_pytorch(ckpt, config, use_ema=False)
    jax.tree.map(np.testing.assert_array_equal, raw, convert.from_pytorch(state_dict, config))
    w = expected["params"]["GaussianFourierProjection_0"]["W"]
    np.testing.assert_array_equal(w, state_dict[fourier_w])  # not shifted by +1
    with pytest.raises(convert.ConversionError, match="shadow params"):
        convert.from_pytorch(dict(ckpt, ema={"shadow_params": shadow[:-1]}), config)


def test_from_pytorch_refuses_wrong_architecture(shared_dir):
    config, state_dict, _ = _load_fixture(shared_dir, "ddpmpp_vp_small")
    config.model.nf = 32
    # The first mismatch in (sorted) template order, with its torch source and both shapes.
    expected = (
        "shape mismatch at params/AttnBlockpp_0/GroupNorm_0/bias (from "
        "all_modules.6.GroupNorm_0.bias): checkpoint has (32,), model expects (64,)"
    )
    with pytest.raises(convert.ConversionError, match=re.escape(expected)):
        convert.from_pytorch(state_dict, config)


def test_from_pytorch_ncsnv2_requires_torch_compat(shared_dir):
    config, state_dict, _ = _load_fixture(shared_dir, "ncsnv2_small")
    config.model.torch_compat = False
    with pytest.raises(convert.ConversionError, match="torch_compat=True"):
        convert.from_pytorch(state_dict, config)
    config.model.torch_compat = True
    config.model.nf = 32
    with pytest.raises(convert.ConversionError, match=r"\(3, 3, 3, 16\).*\(3, 3, 3, 32\)"):
        convert.from_pytorch(state_dict, config)


def test_from_pytorch_unconditional_drops_unused_resblock_dense(shared_dir):
    # torch builds every res block's temb Dense_0 even when unconditional; JAX creates none.
    config, state_dict, _ = _load_fixture(shared_dir, "ddpmpp_vp_small")
    config.model.conditional = False
    unconditional = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "all_modules":
            if int(parts[1]) < 2:  # the time-embedding MLP is not built
                continue
            parts[1] = str(int(parts[1]) - 2)
        unconditional[".".join(parts)] = value
    params = convert.from_pytorch(unconditional, config)["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    assert not any("Dense" in path for path in flat)
    np.testing.assert_array_equal(
        flat["ResnetBlockBigGANpp_0/Conv_1/kernel"],
        state_dict["all_modules.3.Conv_1.weight"].transpose(2, 3, 1, 0),
    )


def test_from_pytorch_refuses_leftover_entries(shared_dir):
    config, state_dict, _ = _load_fixture(shared_dir, "ddpm_small")
    extra = dict(state_dict, **{"all_modules.3.NIN_7.W": np.zeros((32, 32), np.float32)})
    with pytest.raises(convert.ConversionError, match="NIN_7"):
        convert.from_pytorch(extra, config)
    missing = {k: v for k, v in state_dict.items() if k != "all_modules.0.bias"}
    with pytest.raises(convert.ConversionError, match="missing.*Dense_0/bias"):
        convert.from_pytorch(missing, config)


def test_pth_file_to_orbax_checkpoint_end_to_end(shared_dir, tmp_path):
    config, state_dict, _ = _load_fixture(shared_dir, "ddpm_small")
    _write_state_dict(tmp_path / "checkpoint_5.pth", state_dict)
    directory = convert.convert_main(
        config,
        str(tmp_path / "w"),
        pytorch=str(tmp_path / "checkpoint_5.pth"),
        jax_ckpt=None,
        use_ema=True,
    )
    # A bare state dict has no step: checkpoint_5 is ckpt 5, stored at 5 * snapshot_freq.
    step = 5 * config.training.snapshot_freq
    assert directory.endswith(os.path.join("checkpoints", str(step)))
    restored = convert.load_converted(tmp_path / "w")
    assert int(restored["step"]) == step and "opt_state" not in restored
    expected = convert.from_pytorch(state_dict, config)["params"]
    jax.tree.map(np.testing.assert_array_equal, restored["params"], expected)
    jax.tree.map(np.testing.assert_array_equal, restored["ema_params"], expected)
    with pytest.raises(FileExistsError, match=f"already has step {step}"):
        convert.save_converted(tmp_path / "w", {"params": expected}, step)


# ---------------------------------------------------------------------------------------------
# Original JAX (flax 0.3.1) msgpack checkpoints.
# ---------------------------------------------------------------------------------------------


def _flax031_state(params, step=12):
    """A score_sde `State` state dict as flax 0.3.1 wrote it (GroupNorm params (1, 1, 1, C))."""

    def old_layout(path, x):
        x = np.asarray(x)
        if path[-2].startswith("GroupNorm_") and x.ndim == 1:
            return x.reshape(1, 1, 1, -1)
        return x

    flat = traverse_util.flatten_dict(params)
    old = traverse_util.unflatten_dict({p: old_layout(p, x) for p, x in flat.items()})
    # flax.optim.Adam keeps one _AdamParamState(grad_ema, grad_sq_ema) per parameter.
    adam = jax.tree.map(lambda x: {"grad_ema": x * 0, "grad_sq_ema": x * 0}, old)
    raw = jax.tree.map(lambda x: x - 1.0, old)
    return {
        "step": step,
        "optimizer": {"target": raw, "state": {"step": step, "param_states": adam}},
        "lr": 2e-4,
        "model_state": {},
        "ema_rate": 0.999,
        "params_ema": old,
        "rng": np.array([0, 42], np.uint32),
    }


def test_flax_msgpack_round_trip_is_exact(tmp_path):
    from configs.testing import ncsnpp_tiny
    from models import utils as mutils

    config = ncsnpp_tiny.get_config()
    template = convert.params_template(config)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), template)
    state = _flax031_state(params)
    assert any(np.shape(x) == (1, 1, 1, 16) for x in jax.tree.leaves(state["params_ema"]))
    path = tmp_path / "checkpoint_12"
    path.write_bytes(serialization.msgpack_serialize(state))

    ema = convert.from_flax_msgpack(path, config)
    jax.tree.map(np.testing.assert_array_equal, ema["params"], params)
    raw = convert.from_flax_msgpack(path.read_bytes(), config, use_ema=False)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b - 1.0), raw["params"], params)
    # The converted tree is usable as is.
    x = np.zeros((1, 16, 16, 3), np.float32)
    assert (
        mutils.get_model(config).apply(ema, x, np.ones(1, np.float32), train=False).shape == x.shape
    )

    directory = convert.convert_main(
        config, str(tmp_path / "w"), pytorch=None, jax_ckpt=str(path), use_ema=True
    )
    assert directory.endswith(os.path.join("checkpoints", "12"))


def test_flax_msgpack_refuses_mismatched_checkpoint(tmp_path):
    from configs.testing import ncsnpp_tiny

    config = ncsnpp_tiny.get_config()
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), convert.params_template(config))
    params["Conv_0"]["kernel"] = np.zeros((3, 3, 3, 8), np.float32)
    data = serialization.msgpack_serialize(_flax031_state(params))
    with pytest.raises(convert.ConversionError, match=r"params/Conv_0/kernel.*\(3, 3, 3, 8\).*16"):
        convert.from_flax_msgpack(data, config)


# ---------------------------------------------------------------------------------------------
# Converted checkpoints through evaluation: the originals' checkpoint_k is ckpt k.
# ---------------------------------------------------------------------------------------------


def _write_pytorch_checkpoint(path, state_dict, step):
    """A score_sde_pytorch `checkpoint_k.pth` as its loop saves it (DataParallel, EMA, step)."""
    writer = _PthWriter()
    shadow = [writer.tensor(v) for k, v in state_dict.items() if k != "sigmas"]
    model = collections.OrderedDict(
        (f"module.{k}", writer.tensor(v)) for k, v in state_dict.items()
    )
    writer.write(path, {
        "optimizer": {"state": {}, "param_groups": []},
        "model": model,
        "ema": {"decay": 0.9999, "num_updates": step, "shadow_params": shadow},
        "step": step,
    })  # fmt: skip


def _evaluate_only(config, ckpt):
    config.eval.begin_ckpt = config.eval.end_ckpt = ckpt
    config.eval.enable_loss = config.eval.enable_bpd = config.eval.enable_sampling = False
    return config


def test_pytorch_checkpoint_k_is_evaluated_as_ckpt_k(shared_dir, tmp_path):
    import run_lib

    config, state_dict, _ = _load_fixture(shared_dir, "ddpm_small")
    freq = config.training.snapshot_freq  # 50000, as the paper's configs
    path = tmp_path / "checkpoint_26.pth"
    _write_pytorch_checkpoint(path, state_dict, 26 * freq + 1)  # saved after the increment
    workdir = str(tmp_path / "w")
    directory = convert.convert_main(
        config, workdir, pytorch=str(path), jax_ckpt=None, use_ema=True
    )
    assert directory.endswith(os.path.join("checkpoints", str(26 * freq)))
    record = json.loads((tmp_path / "w" / "converted.json").read_text())[str(26 * freq)]
    assert record["source_step"] == 26 * freq + 1 and record["source"] == str(path)
    (report,) = run_lib.evaluate(_evaluate_only(config, 26), workdir)
    assert report == {"ckpt": 26, "step": 26 * freq}


@pytest.mark.parametrize(
    "source_step, name, expected",
    [
        (26 * 50000 + 1, "checkpoint_26.pth", 26 * 50000),  # score_sde_pytorch
        (26 * 50000 + 5, "checkpoint_26", 26 * 50000),  # JAX original, n_jitted_steps 5
        (26 * 50000 + 5, "checkpoint_130", 26 * 50000),  # its checkpoints-meta numbering
        (26 * 50000, "checkpoint_26", 26 * 50000),
        (1_310_001, "checkpoint_131", 1_310_001),  # a preemption checkpoint: kept as is
        (None, "checkpoint_1.pth", 50000),  # a bare state dict: k from the name
        (None, "model.pth", 0),
    ],
)
def test_checkpoint_step_maps_the_originals_numbering(source_step, name, expected):
    config = ml_collections.ConfigDict({"training": {"snapshot_freq": 50000, "n_jitted_steps": 5}})
    assert convert.checkpoint_step(source_step, f"/x/{name}", config)[0] == expected


@pytest.mark.slow  # two main.py runs (~50 s on 2 busy cores); the mapping is tested above
def test_flax_checkpoint_k_through_the_command_line(tmp_path):
    """`checkpoint_2` (flax 0.3.1, step 2 * snapshot_freq + 1) -> models.convert -> main.py
    --mode eval --config.eval.begin_ckpt=2; ckpt 3, which does not exist, is one line."""
    import subprocess
    import sys

    from configs.testing import ncsnpp_tiny

    config = ncsnpp_tiny.get_config()
    freq = config.training.snapshot_freq
    template = convert.params_template(config)
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    path = tmp_path / "checkpoint_2"
    path.write_bytes(serialization.msgpack_serialize(_flax031_state(params, step=2 * freq + 1)))
    workdir = tmp_path / "w"
    convert.convert_main(config, str(workdir), pytorch=None, jax_ckpt=str(path), use_ema=True)
    root = pathlib.Path(__file__).resolve().parents[1]
    env = cpu_env.env(1)

    def evaluate(ckpt):
        cmd = [sys.executable, str(root / "main.py"), "--mode=eval", f"--workdir={workdir}",
               f"--config={root / 'configs/testing/ncsnpp_tiny.py'}",
               f"--config.eval.begin_ckpt={ckpt}", f"--config.eval.end_ckpt={ckpt}",
               "--config.eval.enable_loss=False"]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    done = evaluate(2)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((workdir / "eval" / "report_2.json").read_text())
    assert report == {"ckpt": 2, "step": 2 * freq}
    done = evaluate(3)
    assert done.returncode != 0
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("main.py:")]
    assert f"has steps [{2 * freq}]" in line, line

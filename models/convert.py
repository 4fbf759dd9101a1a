"""Converters from the original checkpoints to this port's Flax params, and a CLI.

Two sources:

* **score_sde_pytorch** `checkpoint_N.pth` files (`{"model", "ema", "optimizer", "step"}`, the
  model keys prefixed with `module.` by DataParallel) or bare `model.state_dict()`s. `read_pth`
  (`models/pth.py`) reads them without torch and without running pickled code; `from_pytorch` maps the torch names
  onto the Flax auto-names. NCSN++ / DDPM++ / DDPM build their layers in an `all_modules`
  ModuleList consumed in forward order; the JAX original creates the same layers, in the same
  order, as `@nn.compact` submodules named `<Class>_<k>` with one counter per class. We replay
  that creation order from the config (`_ncsnpp_modules`, `_ddpm_modules`) to name every
  `all_modules.<i>`; shapes are only checked, never used to guess.
* **score_sde** (JAX, flax 0.3.1) msgpack checkpoints of
  `State(step, optimizer{target, state}, lr, model_state, ema_rate, params_ema, rng)`:
  `from_flax_msgpack`. Their GroupNorm `scale`/`bias` are (1, 1, 1, C); modern flax uses (C,).

Every converter checks the result against `jax.eval_shape(model.init, ...)` of
`models.get_model(config)` and refuses a checkpoint that does not fit (first mismatching path
and both shapes, or the unexpected / missing paths); nothing is half-loaded.

Our own checkpoint layout, written by `save_converted`: an Orbax `CheckpointManager` in
`<workdir>/checkpoints`, one step-numbered checkpoint holding `{"step", "params", "ema_params"}`
(`opt_state` omitted: a converted checkpoint has none). The CLI stores the originals'
`checkpoint_k` (saved at step k * snapshot_freq + 1 by PyTorch, + n_jitted_steps by JAX) at
step k * snapshot_freq, where `main.py --mode eval --config.eval.begin_ckpt=k` reads it
(`checkpoint_step`); `<workdir>/converted.json` records each source file and its own step.

CLI:
    python -m models.convert --config configs/ve/cifar10_ncsnpp_continuous.py \
        --pytorch checkpoint_24.pth --workdir W
    python -m models.convert --config configs/ve/cifar10_ncsnpp_continuous.py \
        --jax checkpoint_24 --workdir W
"""

import collections
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import serialization, traverse_util
from jax import numpy as jnp
from ml_collections import config_flags

import fileio
import utils
from models import ncsnv2, pth
from models import utils as mutils

Path = tuple[str, ...]


class ConversionError(ValueError):
    """A checkpoint does not fit the model built from the config."""


# ---------------------------------------------------------------------------------------------
# Replaying the original module creation order: all_modules.<i> -> Flax auto-name.
# ---------------------------------------------------------------------------------------------


class _Namer:
    """Flax-style auto-names, one counter per class, recording the torch ModuleList entries."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.torch_modules: list[str] = []

    def new(self, cls: str, in_torch_list: bool = True) -> str:
        """Names the next `cls` submodule; `in_torch_list=False` for parameter-free modules
        that the JAX original creates inline but torch keeps outside `all_modules`."""
        name = f"{cls}_{self.counts[cls]}"
        self.counts[cls] += 1
        if in_torch_list:
            self.torch_modules.append(name)
        return name


def _ncsnpp_modules(config) -> list[str]:
    """Top-level Flax names of `NCSNpp.all_modules`, in JAX creation (= torch forward) order."""
    m = config.model
    namer = _Namer()
    resblock_type = m.resblock_type.lower()
    progressive, progressive_input = m.progressive.lower(), m.progressive_input.lower()
    resblock = "ResnetBlockDDPMpp" if resblock_type == "ddpm" else "ResnetBlockBigGANpp"
    n_levels = len(m.ch_mult)
    resolutions = [config.data.image_size // 2**i for i in range(n_levels)]

    if m.embedding_type.lower() == "fourier":
        namer.new("GaussianFourierProjection")
    if m.conditional:
        namer.new("Dense")
        namer.new("Dense")
    namer.new("Conv")
    # Downsampling path.
    for i_level in range(n_levels):
        for _ in range(m.num_res_blocks):
            namer.new(resblock)
            if resolutions[i_level] in m.attn_resolutions:
                namer.new("AttnBlockpp")
        if i_level != n_levels - 1:
            namer.new("Downsample" if resblock_type == "ddpm" else resblock)
            if progressive_input == "input_skip":
                namer.new("Downsample", in_torch_list=False)  # torch: self.pyramid_downsample
                namer.new("Combine")
            elif progressive_input == "residual":
                namer.new("Downsample")
    # Middle.
    namer.new(resblock)
    namer.new("AttnBlockpp")
    namer.new(resblock)
    # Upsampling path.
    for i_level in reversed(range(n_levels)):
        for _ in range(m.num_res_blocks + 1):
            namer.new(resblock)
        if resolutions[i_level] in m.attn_resolutions:
            namer.new("AttnBlockpp")
        if progressive != "none":
            if i_level == n_levels - 1 or progressive == "output_skip":
                if i_level != n_levels - 1:
                    namer.new("Upsample", in_torch_list=False)  # torch: self.pyramid_upsample
                namer.new("GroupNorm")
                namer.new("Conv")
            else:  # residual
                namer.new("Upsample")
        if i_level != 0:
            namer.new("Upsample" if resblock_type == "ddpm" else resblock)
    if progressive != "output_skip":
        namer.new("GroupNorm")
        namer.new("Conv")
    return namer.torch_modules


def _ddpm_modules(config) -> list[str]:
    """Top-level Flax names of `DDPM.all_modules`, in JAX creation (= torch forward) order."""
    m = config.model
    namer = _Namer()
    n_levels = len(m.ch_mult)
    resolutions = [config.data.image_size // 2**i for i in range(n_levels)]
    if m.conditional:
        namer.new("Dense")
        namer.new("Dense")
    namer.new("Conv")
    for i_level in range(n_levels):
        for _ in range(m.num_res_blocks):
            namer.new("ResnetBlockDDPM")
            if resolutions[i_level] in m.attn_resolutions:
                namer.new("AttnBlock")
        if i_level != n_levels - 1:
            namer.new("Downsample")
    namer.new("ResnetBlockDDPM")
    namer.new("AttnBlock")
    namer.new("ResnetBlockDDPM")
    for i_level in reversed(range(n_levels)):
        for _ in range(m.num_res_blocks + 1):
            namer.new("ResnetBlockDDPM")
        if resolutions[i_level] in m.attn_resolutions:
            namer.new("AttnBlock")
        if i_level != 0:
            namer.new("Upsample")
    namer.new("GroupNorm")
    namer.new("Conv")
    return namer.torch_modules


MODULE_LISTS = {"ncsnpp": _ncsnpp_modules, "ddpm": _ddpm_modules}
_NCSNV2_NAMES = ("ncsnv2_64", "ncsnv2_128", "ncsnv2_256")
_LAYER_KIND = re.compile(r"^(GroupNorm|Conv2d|Conv|Dense)_\d+$")


def _convert_leaf(module: str, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Renames and re-lays-out one torch parameter of the layer named `module` (Flax name)."""
    kind = _LAYER_KIND.match(module)
    kind = kind.group(1) if kind else None
    if kind == "GroupNorm":
        return {"weight": "scale", "bias": "bias"}[leaf], value
    if kind in ("Conv", "Dense") and leaf == "weight":
        # conv (out, in, kh, kw) -> HWIO; linear (out, in) -> (in, out).
        return "kernel", value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    if kind == "Conv2d" and leaf == "weight":  # FIR up/down conv: param `weight`, HWIO
        return "weight", value.transpose(2, 3, 1, 0)
    # Biases, NIN W (already (in, out)) and b, the Fourier W: same name and layout.
    return leaf, value


def _map_ncsnpp_ddpm(state_dict: Mapping[str, np.ndarray], config) -> dict[Path, tuple]:
    """Flax path -> (array, torch key) for an NCSN++/DDPM++/DDPM state dict."""
    top = MODULE_LISTS[config.model.name](config)
    flat = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts == ["sigmas"]:  # buffer; the Flax model derives sigmas from the config
            continue
        if parts[0] != "all_modules" or len(parts) < 3 or not parts[1].isdigit():
            raise ConversionError(f"unexpected torch entry {key!r}")
        index = int(parts[1])
        if index >= len(top):
            raise ConversionError(f"torch entry {key!r}: the config builds only {len(top)} modules")
        modules = [top[index], *parts[2:-1]]
        if not config.model.conditional and modules[-1] == "Dense_0" and len(modules) == 2:
            # torch builds every res block's temb Dense_0 even when unconditional; unused.
            continue
        leaf, array = _convert_leaf(modules[-1], parts[-1], np.asarray(value))
        flat[(*modules, leaf)] = (array, key)
    return flat


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes DataParallel's `module.` prefix (if every key has it)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _apply_ema_shadow(model_sd: dict[str, np.ndarray], ema: Mapping, config) -> dict:
    """Replaces the trainable parameters of `model_sd` by score_sde_pytorch's EMA shadow params.

    `ExponentialMovingAverage.shadow_params` is a list over `model.parameters()` that have
    `requires_grad`, in `named_parameters()` order, which is the state-dict order without the
    buffers (`sigmas`) and the non-trainable Fourier `W` (`all_modules.0.W`).
    """
    shadow = list(ema["shadow_params"])
    fourier = config.model.name == "ncsnpp" and config.model.embedding_type.lower() == "fourier"
    frozen = {"sigmas"} | ({"all_modules.0.W"} if fourier else set())
    trainable = [k for k in model_sd if k not in frozen]
    if len(shadow) != len(trainable):
        raise ConversionError(
            f"EMA has {len(shadow)} shadow params, the model {len(trainable)} trainable ones"
        )
    out = dict(model_sd)
    for key, value in zip(trainable, shadow):
        value = np.asarray(value)
        if value.shape != np.shape(model_sd[key]):
            raise ConversionError(
                f"EMA shadow param for {key!r} has shape {value.shape}, "
                f"the model entry {np.shape(model_sd[key])}"
            )
        out[key] = value
    return out


def from_pytorch(state_dict: Mapping[str, Any], config, *, use_ema: bool = True) -> dict:
    """Converts a score_sde_pytorch state dict or checkpoint to `{"params": ...}`.

    Args:
      state_dict: either `model.state_dict()` (NumPy arrays, torch names; a `module.` prefix is
        removed) or the checkpoint dict `{"model", "ema", "optimizer", "step"}` from `read_pth`.
      config: the experiment config the checkpoint was trained with (for NCSNv2,
        `model.torch_compat` must be True: torch NCSNv2 differs from the JAX original).
      use_ema: for a checkpoint dict, use the EMA shadow params (as score_sde_pytorch does for
        sampling and evaluation) instead of the raw `model` weights.

    Returns:
      Variables for `models.get_model(config).apply`.

    Raises:
      ConversionError: the checkpoint does not fit the config's model.
    """
    if isinstance(state_dict.get("model"), Mapping):
        model_sd = _strip_module_prefix(state_dict["model"])
        if use_ema and state_dict.get("ema") is not None:
            model_sd = _apply_ema_shadow(model_sd, state_dict["ema"], config)
        elif use_ema:
            logging.warning("Checkpoint has no 'ema' entry; converting the raw model weights.")
    else:
        model_sd = _strip_module_prefix(state_dict)
    template = params_template(config)
    name = config.model.name
    if name in MODULE_LISTS:
        flat = _map_ncsnpp_ddpm(model_sd, config)
    elif name in _NCSNV2_NAMES:
        flat = _map_ncsnv2(model_sd, config, template)
    else:
        raise ConversionError(f"no PyTorch converter for model {name!r}")
    return {"params": fit_to_template(flat, template)}


def _map_ncsnv2(model_sd: dict, config, template) -> dict[Path, tuple]:
    """Flax path -> (array, source) for a torch NCSNv2, via `models.ncsnv2`'s own mapping."""
    if not config.model.get("torch_compat", False):
        raise ConversionError(
            "a PyTorch NCSNv2 checkpoint needs the torch-compatible NCSNv2 "
            "(refine3 width nf, unbiased InstanceNorm++ mean variance, align_corners=True): "
            "set --config.model.torch_compat=True"
        )
    try:
        params = ncsnv2.torch_to_flax_ncsnv2(model_sd, {"params": template})
    except ValueError as e:
        raise ConversionError(str(e)) from e
    flat = traverse_util.flatten_dict(params)
    return {path: (np.asarray(v), None) for path, v in flat.items()}


# ---------------------------------------------------------------------------------------------
# Templates and the fit check.
# ---------------------------------------------------------------------------------------------


def params_template(config) -> dict:
    """Abstract params (ShapeDtypeStructs) of `models.get_model(config)`, via `jax.eval_shape`."""
    model = mutils.get_model(config)
    size, channels = config.data.image_size, config.data.num_channels
    x = jnp.zeros((1, size, size, channels), jnp.float32)
    # NCSN++ takes float sigma / t; DDPM and NCSN(v2) may index their sigma table with labels.
    dtype = jnp.float32 if config.model.name == "ncsnpp" else jnp.int32
    labels = jnp.ones((1,), dtype)
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.eval_shape(lambda: model.init(keys, x, labels, train=False))
    return variables["params"]


def fit_to_template(flat: Mapping[Path, tuple], template) -> dict:
    """Checks converted leaves against the template and nests them in the template's order.

    Args:
      flat: Flax path -> (array, source name for messages or None).
      template: the model's params tree (arrays or ShapeDtypeStructs).

    Returns:
      The params tree with NumPy arrays cast to the template dtypes.

    Raises:
      ConversionError: a shape mismatch (first one in template order, with both shapes), or
        checkpoint entries the model lacks, or model params the checkpoint lacks.
    """
    flat_template = traverse_util.flatten_dict(template)
    for path, spec in flat_template.items():
        if path in flat and tuple(flat[path][0].shape) != tuple(spec.shape):
            array, source = flat[path]
            raise ConversionError(
                f"shape mismatch at params/{'/'.join(path)}{_from(source)}: checkpoint has "
                f"{tuple(array.shape)}, model expects {tuple(spec.shape)}"
            )
    unexpected = ["/".join(p) + _from(flat[p][1]) for p in flat if p not in flat_template]
    if unexpected:
        raise ConversionError(f"checkpoint entries the model does not have: {unexpected}")
    missing = ["/".join(p) for p in flat_template if p not in flat]
    if missing:
        raise ConversionError(f"model params missing from the checkpoint: {missing}")
    return traverse_util.unflatten_dict(
        {p: np.asarray(flat[p][0], dtype=spec.dtype) for p, spec in flat_template.items()}
    )


def _from(source: str | None) -> str:
    return f" (from {source})" if source else ""


# ---------------------------------------------------------------------------------------------
# Original JAX (flax 0.3.1) msgpack checkpoints.
# ---------------------------------------------------------------------------------------------


def read_flax_msgpack(path_or_bytes: str | os.PathLike | bytes) -> dict:
    """Restores a score_sde msgpack checkpoint as its raw state dict (no code runs)."""
    if isinstance(path_or_bytes, bytes | bytearray):
        data = bytes(path_or_bytes)
    else:
        data = fileio.read_bytes(path_or_bytes)
    return serialization.msgpack_restore(data)


def from_flax_msgpack(
    path_or_bytes: str | os.PathLike | bytes, config, *, use_ema: bool = True
) -> dict:
    """Converts an original score_sde (flax 0.3.1) checkpoint to `{"params": ...}`.

    Args:
      path_or_bytes: a `checkpoint_N` file or its bytes.
      config: the experiment config it was trained with.
      use_ema: take `params_ema` (what score_sde samples and evaluates with); otherwise the raw
        `optimizer.target`.

    Returns:
      Variables for `models.get_model(config).apply`.

    Raises:
      ConversionError: the checkpoint does not fit the config's model.
    """
    return {"params": _params_from_flax_state(read_flax_msgpack(path_or_bytes), config, use_ema)}


def _params_from_flax_state(state: Mapping, config, use_ema: bool) -> dict:
    if use_ema:
        params = state.get("params_ema")
    else:
        params = (state.get("optimizer") or {}).get("target")
    if not isinstance(params, Mapping):
        which = "params_ema" if use_ema else "optimizer.target"
        raise ConversionError(f"checkpoint has no {which}; top-level keys: {sorted(state)}")
    if set(params) == {"params"}:
        params = params["params"]
    flat = {}
    for path, value in traverse_util.flatten_dict(params).items():
        value = np.asarray(value)
        # flax 0.3.1 nn.GroupNorm scale/bias are (1, 1, 1, C); modern flax (C,). The other norms
        # (InstanceNorm++ & co.) declare their own (1, 1, 1, C) params and keep them.
        if len(path) >= 2 and path[-2].startswith("GroupNorm_") and value.shape[:-1] == (1, 1, 1):
            value = value.reshape(value.shape[-1])
        flat[path] = (value, None)
    return fit_to_template(flat, params_template(config))


# ---------------------------------------------------------------------------------------------
# Our checkpoint layout.
# ---------------------------------------------------------------------------------------------


def save_converted(workdir: str | os.PathLike, variables: Mapping, step: int) -> str:
    """Writes converted weights as step `step` of `<workdir>/checkpoints` (Orbax).

    The checkpoint is `{"step", "params", "ema_params"}` with both param trees set to the
    converted (EMA) weights, the layout `run_lib` restores; there is no `opt_state`.

    Returns:
      The checkpoint directory.

    Raises:
      FileExistsError: the step is already there (converted weights never overwrite a run).
    """
    directory = fileio.join(fileio.absolute(workdir), "checkpoints")
    params = variables["params"]
    item = {"step": int(step), "params": params, "ema_params": params}
    with ocp.CheckpointManager(directory) as manager:
        if int(step) in manager.all_steps():
            raise FileExistsError(f"{directory} already has step {int(step)}; not overwriting it")
        manager.save(int(step), args=ocp.args.StandardSave(item), force=True)
        manager.wait_until_finished()
    return fileio.join(directory, str(int(step)))


def load_converted(workdir: str | os.PathLike, step: int | None = None) -> dict:
    """Restores `{"step", "params", "ema_params"}` from `<workdir>/checkpoints` (latest step)."""
    directory = fileio.join(fileio.absolute(workdir), "checkpoints")
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        return manager.restore(step, args=ocp.args.StandardRestore())


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------


def _source_step(obj: Any) -> int | None:
    """The step a checkpoint records (score_sde_pytorch `step`, flax `State.step`), if any."""
    if isinstance(obj, Mapping) and "step" in obj and np.ndim(obj["step"]) == 0:
        return int(obj["step"])
    return None


def checkpoint_step(source_step: int | None, path: str, config) -> tuple[int, str]:
    """The step a converted checkpoint is stored at, so that `--mode eval` finds it as ckpt k.

    The originals save `checkpoint_k` after the step counter moved past k * snapshot_freq:
    score_sde_pytorch at k * snapshot_freq + 1, the JAX original at k * snapshot_freq +
    n_jitted_steps. `evaluate` reads ckpt k at exactly k * snapshot_freq (our trainer saves
    there), so such a step is stored as k * snapshot_freq; the source step is logged and kept
    in `<workdir>/converted.json`. A step between snapshots (a preemption checkpoint) is kept
    as it is. Without a step in the file (a bare state dict), k comes from the file name
    `checkpoint_<k>[.pth]` (else step 0).

    Returns:
      `(step, how)`: the step to store, and a phrase saying how it was chosen.
    """
    freq = int(config.training.snapshot_freq)
    offset_max = max(1, int(config.training.get("n_jitted_steps", 1)))
    if source_step is not None:
        k, offset = divmod(source_step, freq)
        if offset == 0:
            return source_step, f"its step {source_step} = ckpt {k} x snapshot_freq {freq}"
        if offset <= offset_max:
            return (
                k * freq,
                f"its step {source_step} = ckpt {k} x {freq} + {offset} (saved after the step)",
            )
        return source_step, f"its step {source_step}, between snapshots (not a ckpt index)"
    match = re.search(r"checkpoint_(\d+)(\.pth)?$", os.path.basename(path))
    if match:
        k = int(match.group(1))
        return k * freq, f"no step inside; ckpt {k} from the file name x snapshot_freq {freq}"
    return 0, "no step inside and no checkpoint_<k> name: stored as step 0"


def _record_source(workdir: str, step: int, record: dict) -> None:
    """Adds `{step: record}` to `<workdir>/converted.json` (where each converted step came from)."""
    path = fileio.join(fileio.absolute(workdir), "converted.json")
    entries = json.loads(fileio.read_text(path)) if fileio.exists(path) else {}
    entries[str(step)] = record
    fileio.write_text_atomic(path, json.dumps(entries, indent=2, sort_keys=True))


def _count(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def convert_main(
    config, workdir: str, *, pytorch: str | None, jax_ckpt: str | None, use_ema: bool
) -> str:
    """Converts one checkpoint and writes it into `workdir`; returns the checkpoint directory."""
    if (pytorch is None) == (jax_ckpt is None):
        raise app.UsageError("give exactly one of --pytorch and --jax")
    if pytorch is not None:
        raw = pth.read_pth(pytorch)
        variables = from_pytorch(raw, config, use_ema=use_ema)
        source, source_step = pytorch, _source_step(raw)
    else:
        state = read_flax_msgpack(jax_ckpt)
        variables = {"params": _params_from_flax_state(state, config, use_ema)}
        source, source_step = jax_ckpt, _source_step(state)
    step, how = checkpoint_step(source_step, source, config)
    logging.info(
        "Converted %s (%s weights, %d parameters) for model %s",
        source,
        "EMA" if use_ema else "raw",
        _count(variables),
        config.model.name,
    )
    directory = save_converted(workdir, variables, step)
    _record_source(workdir, step, {"source": fileio.absolute(source), "source_step": source_step,
                                   "ema": use_ema, "how": how})  # fmt: skip
    logging.info("Wrote step %d (%s) to %s; evaluate it with --config.eval.begin_ckpt=%d",
                 step, how, directory, step // config.training.snapshot_freq)  # fmt: skip
    return directory


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    utils.quiet_library_logs()
    f = flags.FLAGS
    convert_main(f.config, f.workdir, pytorch=f.pytorch, jax_ckpt=f.jax, use_ema=f.use_ema)


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Training configuration.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Work directory; writes <workdir>/checkpoints.")
    flags.DEFINE_string("pytorch", None, "score_sde_pytorch checkpoint (.pth) to convert.")
    flags.DEFINE_string("jax", None, "score_sde (JAX, flax 0.3.1) msgpack checkpoint to convert.")
    flags.DEFINE_bool("use_ema", True, "Convert the EMA weights (else the raw model weights).")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)

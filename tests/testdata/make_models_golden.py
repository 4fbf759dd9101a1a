"""Regenerates models_golden.npz and models_tiny_params.json from the ORIGINAL score_sde code.

Usage (from the repository root, with a checkout of yang-song/score_sde):

    .venv/bin/python tests/testdata/make_models_golden.py /path/to/score_sde

The original `models/{layers,layerspp,up_or_down_sampling,ncsnpp,ddpm,normalization}.py` are
copied into a temporary package and run unmodified under this environment's flax; only
`models/utils.py` is replaced by a stub with `register_model`, `get_model` and `get_sigmas`
(the real one imports the removed `flax.optim`). Inputs and params come from
`tests/test_models.py` (`tiny_inputs`, `numpy_params`), so the tests rebuild them exactly.
"""

import importlib
import json
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import test_models  # noqa: E402
from flax import traverse_util  # noqa: E402

_FILES = ("layers", "layerspp", "up_or_down_sampling", "ncsnpp", "ddpm", "normalization")
_STUB_UTILS = """
import jax.numpy as jnp
_MODELS = {}
def register_model(cls=None, *, name=None):
  def _register(cls):
    _MODELS[name or cls.__name__] = cls
    return cls
  return _register if cls is None else _register(cls)
def get_model(name):
  return _MODELS[name]
def get_sigmas(config):
  return jnp.exp(jnp.linspace(jnp.log(config.model.sigma_max), jnp.log(config.model.sigma_min),
                              config.model.num_scales))
"""


def _import_original(score_sde_dir, tmp):
    package = pathlib.Path(tmp) / "score_sde_models"
    package.mkdir()
    for name in _FILES:
        shutil.copy(pathlib.Path(score_sde_dir) / "models" / f"{name}.py", package)
    (package / "utils.py").write_text(_STUB_UTILS)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, tmp)
    importlib.import_module("score_sde_models.ncsnpp")
    importlib.import_module("score_sde_models.ddpm")
    return importlib.import_module("score_sde_models.utils"), importlib.import_module(
        "score_sde_models.up_or_down_sampling"
    )


def main(score_sde_dir):
    jax.config.update("jax_default_matmul_precision", "highest")
    arrays, snapshot = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        orig_utils, orig_fir = _import_original(score_sde_dir, tmp)
        for name, make_config in test_models.TINY_CONFIGS.items():
            config = make_config()
            model = orig_utils.get_model(config.model.name)(config=config)
            variables = test_models.abstract_variables(model, config)
            shapes = traverse_util.flatten_dict(variables["params"])
            params = test_models.numpy_params({p: v.shape for p, v in shapes.items()})
            x, labels = test_models.tiny_inputs(name, config)
            out = model.apply({"params": params}, x, labels, train=False)
            arrays.update(
                {f"{name}/x": x, f"{name}/labels": labels, f"{name}/out": np.asarray(out)}
            )
            if name in test_models.FINGERPRINT_MODELS:
                params = test_models.init_params(model, name, config)
                arrays[f"{name}/init_fingerprint"] = test_models.init_fingerprint(params)
            if name in test_models.SNAPSHOT_MODELS:
                snapshot[name] = {
                    "source": "score_sde original models/ (see README.md)",
                    "num_params": sum(int(np.prod(v.shape)) for v in shapes.values()),
                    "params": test_models.param_table(variables),
                }
            print(name, out.shape, float(np.abs(out).max()))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
        w = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
        arrays["fir/x"], arrays["fir/w"] = x, w
        arrays["fir/upsample_conv_2d"] = np.asarray(orig_fir.upsample_conv_2d(x, w, k=(1, 3, 3, 1)))
        arrays["fir/conv_downsample_2d"] = np.asarray(
            orig_fir.conv_downsample_2d(x, w, k=(1, 3, 3, 1))
        )
    np.savez_compressed(test_models.GOLDEN_FILE, **arrays)
    test_models.SNAPSHOT_FILE.write_text(_dump_snapshot(snapshot))


def _dump_snapshot(snapshot):
    """JSON with one parameter path per line (readable diffs)."""
    models = []
    for name, entry in snapshot.items():
        rows = ",\n".join(
            f"   {json.dumps(p)}: {json.dumps(s)}" for p, s in entry["params"].items()
        )
        models.append(
            f'{json.dumps(name)}: {{\n  "source": {json.dumps(entry["source"])},\n'
            f'  "num_params": {entry["num_params"]},\n  "params": {{\n{rows}\n  }}\n }}'
        )
    return "{\n " + ",\n ".join(models) + "\n}\n"


if __name__ == "__main__":
    main(sys.argv[1])

"""Shared pytest fixtures. Tests run on CPU; nothing is downloaded."""

import os
import pathlib
import sys

import cpu_env

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# etils.epath decides once per process (functools.cache) whether gs:// goes through
# TensorFlow's gfile, which ignores the GCS emulator of the `gcs_emulator` fixture: fsspec.
os.environ.setdefault("EPATH_USE_TF", "false")
# Simulated devices for the sharding tests and the command lines' XLA:CPU flags; must be set
# before JAX creates its backends (cpu_env imports `utils`, and so jax, after the lines above).
os.environ.setdefault("XLA_FLAGS", cpu_env.xla_flags(8))

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED = ROOT.parent / "shared"


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def shared_dir():
    if not SHARED.exists():
        pytest.skip("../shared is not present")
    return SHARED


# Programs compiled by one test (the tiny train step, samplers) are reused by later tests and
# by the subprocesses some tests start: a persistent compilation cache inside .pytest_cache.
_CACHE = ROOT / ".pytest_cache" / "jax_compilation_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
# The command lines' own cache (utils.setup_jax_runtime) goes there too, not to ~/.cache.
os.environ.setdefault("SCORE_SDE_COMPILATION_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A local GCS emulator (tests/gcs_emulator.py) with bucket `test-bucket`; this process's
    environment points gcsfs, tensorstore and etils.epath at it for the rest of the session.
    Skips when gcp-storage-emulator or gcsfs is not installed."""
    import gcs_emulator

    missing = gcs_emulator.available()
    if missing:
        pytest.skip(missing)
    folder = tmp_path_factory.mktemp("gcs_emulator")
    emulator = gcs_emulator.Emulator(str(folder / "data"), str(folder / "emulator.log"))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in emulator.env.items():
            mp.setenv(name, value)
        try:
            yield emulator
        finally:
            emulator.stop()

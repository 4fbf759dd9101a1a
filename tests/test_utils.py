"""utils.setup_jax_runtime: the command lines' persistent compilation cache; and
release_host_memory."""

import gc
import json
import os
import subprocess
import sys
import weakref

import jax
import pytest

import utils


@pytest.fixture
def restore_cache_dir():
    old = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", old)


@pytest.mark.parametrize("value", ["off", "OFF", " 0 ", "none"])
def test_off_disables_the_cache(monkeypatch, restore_cache_dir, value):
    monkeypatch.setenv(utils.COMPILATION_CACHE_ENV, value)
    before = jax.config.jax_compilation_cache_dir
    assert utils.setup_jax_runtime() is None
    assert jax.config.jax_compilation_cache_dir == before


def test_env_and_argument_pick_the_directory(monkeypatch, tmp_path, restore_cache_dir):
    monkeypatch.setenv(utils.COMPILATION_CACHE_ENV, str(tmp_path / "from_env"))
    assert utils.setup_jax_runtime() == str(tmp_path / "from_env")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "from_env")
    assert os.path.isdir(tmp_path / "from_env")
    # An explicit argument wins over the environment ("off" included).
    assert utils.setup_jax_runtime(str(tmp_path / "arg")) == str(tmp_path / "arg")
    assert utils.setup_jax_runtime("off") is None


def test_default_directory_is_the_user_cache(monkeypatch, tmp_path, restore_cache_dir):
    monkeypatch.delenv(utils.COMPILATION_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    expected = str(tmp_path / "score_sde_jax" / "compilation_cache")
    assert utils.default_compilation_cache_dir() == expected
    assert utils.setup_jax_runtime() == expected


def test_oldest_entries_are_pruned_to_the_size_limit(monkeypatch, tmp_path, restore_cache_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    for i in range(5):  # entry0 is the oldest
        path = cache / f"entry{i}"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    monkeypatch.setattr(utils, "COMPILATION_CACHE_MAX_BYTES", 250)
    utils.setup_jax_runtime(str(cache))
    assert sorted(p.name for p in cache.iterdir()) == ["entry3", "entry4"]


def test_an_unusable_directory_runs_without_the_cache(tmp_path, restore_cache_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert utils.setup_jax_runtime(str(blocker / "cache")) is None


def test_release_host_memory_collects_reference_cycles_first():
    """A jitted function that is gone can hold its executable in a cycle until a collection:
    `release_host_memory` collects before it trims the heap."""

    class Node:
        pass

    gc.disable()  # no automatic collection between the cycle's creation and the call
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        del a, b
        assert alive() is not None  # only the cycle holds it
        utils.release_host_memory()
        assert alive() is None
    finally:
        gc.enable()


def test_xla_cpu_flags_are_added_unless_set():
    name = utils.XLA_CPU_FLAGS[0].split("=")[0]
    assert utils.with_xla_cpu_flags("") == " ".join(utils.XLA_CPU_FLAGS)
    merged = utils.with_xla_cpu_flags(" --xla_force_host_platform_device_count=8 ")
    assert merged.split() == ["--xla_force_host_platform_device_count=8", *utils.XLA_CPU_FLAGS]
    own = f"{name}=individual_dot,reduce,individual_convolution"
    assert utils.with_xla_cpu_flags(own) == own  # the user's setting wins
    assert utils.with_xla_cpu_flags(utils.with_xla_cpu_flags("")) == utils.with_xla_cpu_flags("")


_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import utils
utils.setup_jax_runtime("off")
import jax, jax.numpy as jnp
from jax import lax
dn = ("NHWC", "HWIO", "NHWC")
x = jax.random.normal(jax.random.key(0), (8, 16, 16, 64))
w = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) * 0.05
m = jax.random.normal(jax.random.key(2), (256, 256))
def f(x, w, m):
    conv = lambda w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    return conv(w), m @ m, jax.grad(lambda w: jnp.sum(conv(w) ** 2))(w)
low = jax.jit(f).lower(x, w, m)
ours = low.compile()
ynn = low.compile(compiler_options={"xla_cpu_experimental_ynn_fusion_type": ",".join(
    "LIBRARY_FUSION_TYPE_" + t for t in ("INDIVIDUAL_DOT", "REDUCE", "INDIVIDUAL_CONVOLUTION"))})
def in_ynn(exe, op):
    comps, name = {}, None
    for line in exe.as_text().splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            name = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
            comps[name.lstrip("%")] = []
        elif name:
            comps[name.lstrip("%")].append(line)
    called = [l.split("calls=")[1].split(",")[0].lstrip("%") for body in comps.values()
              for l in body if "__ynn_fusion" in l and "calls=" in l]
    return any(f" {op}(" in l for c in called for l in comps[c])
err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
          for a, b in zip(ours(x, w, m), ynn(x, w, m)))
os.environ["XLA_FLAGS"] = ""
late = utils.configure_xla_cpu()
print(json.dumps({"flags": os.environ["XLA_FLAGS"], "err": err, "late": late,
                  "conv": [in_ynn(e, "convolution") for e in (ours, ynn)],
                  "dot": [in_ynn(e, "dot") for e in (ours, ynn)]}))
"""


def test_setup_routes_convolutions_off_ynnpack():
    """In a fresh process `setup_jax_runtime` puts `XLA_CPU_FLAGS` in effect: convolutions (and
    their gradients) compile to XLA's own kernels, products still to YNNPACK, the values as
    YNNPACK's to float rounding; added once the backends exist, it warns and returns False."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(utils.__file__).rsplit("/", 1)[0]],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["conv"] == [False, True]  # ours: no YNNPACK convolution; the explicit set: one
    assert out["dot"] == [True, True]
    assert out["err"] < 1e-5
    assert out["late"] is False and out["flags"] == " ".join(utils.XLA_CPU_FLAGS)
    assert "take effect in new processes only" in done.stderr

"""utils.setup_jax_runtime: the command lines' persistent compilation cache; and
release_host_memory."""

import gc
import os
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

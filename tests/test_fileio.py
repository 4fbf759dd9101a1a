"""fileio, the path layer: local semantics, and the same calls on gs:// against a local GCS
emulator (a real object-store client: gcsfs through etils.epath, no mock)."""

import os

import numpy as np
import pytest

import fileio


def test_urls_stay_urls_and_a_missing_slash_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fileio.absolute("gs://bucket/run/") == "gs://bucket/run"
    assert fileio.join("gs://bucket/run", "eval", "x.json") == "gs://bucket/run/eval/x.json"
    assert fileio.absolute("runs/a") == str(tmp_path / "runs" / "a")
    for bad in ("gs:/bucket/run", "gs:"):
        with pytest.raises(ValueError, match="slash missing"):
            fileio.makedirs(bad)
    assert not (tmp_path / "gs:").exists()


def test_local_files(tmp_path):
    p = str(tmp_path / "a" / "b.txt")
    fileio.write_text_atomic(p, "one\n")
    fileio.append_text(p, "two\n")
    assert fileio.read_text(p) == "one\ntwo\n"
    assert os.listdir(tmp_path / "a") == ["b.txt"]  # no temporary file left
    assert not fileio.create_exclusive(p, b"x")
    assert fileio.create_exclusive(str(tmp_path / "lock"), b"me")
    fileio.save_npz(str(tmp_path / "r.npz"), x=np.arange(3))
    np.testing.assert_array_equal(fileio.load_npz(str(tmp_path / "r.npz"))["x"], np.arange(3))
    fileio.rename(str(tmp_path / "a"), str(tmp_path / "c"))
    assert fileio.listdir(str(tmp_path)) == ["c", "lock", "r.npz"]
    assert fileio.glob(str(tmp_path), "*.npz") == [str(tmp_path / "r.npz")]
    fileio.rmtree(str(tmp_path / "c"))
    assert not fileio.exists(str(tmp_path / "c"))


def test_the_same_calls_on_gcs(gcs_emulator, tmp_path, monkeypatch):
    import gcs_emulator as emu

    monkeypatch.chdir(tmp_path)
    root = "gs://test-bucket/fileio"
    p = fileio.join(root, "a", "b.txt")
    fileio.makedirs(fileio.join(root, "a"))
    fileio.write_text_atomic(p, "one\n")
    fileio.append_text(p, "two\n")
    assert fileio.read_text(p) == "one\ntwo\n"
    assert fileio.isfile(p) and fileio.isdir(fileio.join(root, "a"))
    assert fileio.getmtime(p) > 0
    assert fileio.create_exclusive(fileio.join(root, "lock"), b"me")
    assert not fileio.create_exclusive(fileio.join(root, "lock"), b"other")
    assert fileio.read_bytes(fileio.join(root, "lock")) == b"me"
    fileio.save_npz(fileio.join(root, "r.npz"), x=np.arange(3))
    np.testing.assert_array_equal(fileio.load_npz(fileio.join(root, "r.npz"))["x"], np.arange(3))
    fileio.rename(fileio.join(root, "a"), fileio.join(root, "c"))
    assert fileio.listdir(root) == ["c", "lock", "r.npz"]
    assert fileio.glob(root, "*.npz") == [fileio.join(root, "r.npz")]
    fileio.remove(fileio.join(root, "lock"))
    fileio.rmtree(fileio.join(root, "c"))
    assert emu.list_objects("test-bucket/fileio") == ["test-bucket/fileio/r.npz"]
    assert not (tmp_path / "gs:").exists()

"""Workdirs on Cloud Storage, against a local GCS emulator (tests/gcs_emulator.py): a real
object-store client (gcsfs through etils.epath for the project's files, tensorstore for Orbax's
arrays), no mock.

`main.py --workdir gs://test-bucket/run` trains, is SIGKILLed, resumes and is evaluated; every
file lands in the bucket (listed through a fresh gcsfs client) and no local `gs:` folder is made.
The training lock and the quarantine of a damaged checkpoint work there too.
"""

import json
import os
import signal
import subprocess
import sys
import time

import cpu_env
import gcs_emulator as emu
import numpy as np
import pytest
from test_run_lib import make_npz, tiny_config

import fileio
from training import checkpoints, lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKDIR = "gs://test-bucket/run"


def main_cmd(data_path, mode, n_iters, *extra):
    return [
        sys.executable, os.path.join(ROOT, "main.py"),
        "--config", os.path.join(ROOT, "configs/testing/ddpmpp_tiny.py"),
        "--mode", mode, f"--workdir={WORKDIR}",
        f"--config.data.path={data_path}", "--config.data.image_size=8",
        "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=(8,)",
        "--config.training.snapshot_sampling=False", "--config.training.batch_size=8",
        "--config.eval.batch_size=8", f"--config.training.n_iters={n_iters}",
        "--config.training.snapshot_freq=2", "--config.training.snapshot_freq_for_preemption=2",
        *extra,
    ]  # fmt: skip


def env():
    return cpu_env.env(8)  # with the emulator's variables, set by the gcs_emulator fixture


def bucket_steps() -> list[int]:
    """The finished checkpoints in the bucket (Orbax writes `commit_success.txt` last on GCS,
    which has no atomic rename; a killed save leaves a step folder without it)."""
    names = emu.list_objects("test-bucket/run/checkpoints")
    parts = [n.split("/") for n in names]
    return sorted(int(p[3]) for p in parts if p[3].isdigit() and p[4:] == ["commit_success.txt"])


@pytest.fixture(scope="module")
def remote_run(gcs_emulator, tmp_path_factory):
    """Trains on gs://test-bucket/run, SIGKILLs the run after a checkpoint, resumes to two
    steps past it. Returns (data_path, final step, local working directory, outputs)."""
    cwd = tmp_path_factory.mktemp("cwd")  # where a stray local `gs:` folder would appear
    data_path = make_npz(cwd / "data.npz")
    proc = subprocess.Popen(main_cmd(data_path, "train", 1000), env=env(), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 300
    while not bucket_steps() or max(bucket_steps()) < 2:
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        assert time.time() < deadline, "no checkpoint in the bucket in time"
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    killed_out = proc.communicate()[0].decode()
    resumed_from = max(bucket_steps())
    final = resumed_from + 2
    done = subprocess.run(main_cmd(data_path, "train", final), env=env(), cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    words = ("Resumed", "scratch", "restored", "corrupt")
    resumed = [line for line in done.stderr.splitlines() if any(w in line for w in words)]
    assert any(f"Resumed from checkpoint step {resumed_from}" in line for line in resumed), resumed
    assert "Could not write" not in done.stderr, done.stderr[-3000:]
    return data_path, final, cwd, {"killed": killed_out, "resumed": done.stderr}


def test_train_kill_resume_evaluate_on_gcs(remote_run):
    data_path, final, cwd, _ = remote_run
    ckpt = final // 2  # snapshot_freq 2
    evaluated = subprocess.run(
        main_cmd(data_path, "eval", final, f"--config.eval.begin_ckpt={ckpt}",
                 f"--config.eval.end_ckpt={ckpt}", "--config.eval.enable_sampling=True",
                 "--config.eval.num_samples=8", "--config.eval.inception_path=none",
                 "--config.eval.enable_bpd=True", "--config.eval.bpd_max_batches=1"),
        env=env(), cwd=cwd, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    objects = emu.list_objects("test-bucket/run")
    names = {o[len("test-bucket/run/") :] for o in objects}
    expected = {"config.json", "metrics.jsonl", "stdout.txt", "eval/summary.md",
                f"eval/report_{ckpt}.json", "eval/metrics.jsonl", f"eval/ckpt_{ckpt}/grid.png",
                f"eval/ckpt_{ckpt}/grid.npz", f"eval/ckpt_{ckpt}/samples_0.npz",
                f"eval/ckpt_{ckpt}/test_ckpt_{ckpt}_bpd_0.npz"}  # fmt: skip
    assert expected <= names, sorted(expected - names)
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in names), sorted(names)
    assert any(n.startswith(f"checkpoints/{final}/") for n in names)
    assert "train.lock" not in names  # released by the finished run
    assert not any(p.name.startswith("gs:") for p in cwd.iterdir()), list(cwd.iterdir())
    report = json.loads(fileio.read_text(f"{WORKDIR}/eval/report_{ckpt}.json"))
    assert report["step"] == final and np.isfinite(report["eval_loss"]) and 2 < report["bpd"] < 20
    # metrics.jsonl: every training step once (the killed run's later lines were dropped).
    steps = [json.loads(line)["step"] for line in fileio.read_text(f"{WORKDIR}/metrics.jsonl")
             .splitlines() if "training_loss" in line]  # fmt: skip
    assert steps == list(range(1, final + 1)), steps
    assert "Resumed from checkpoint step" in fileio.read_text(f"{WORKDIR}/stdout.txt")


def test_training_lock_on_gcs(gcs_emulator):
    workdir = "gs://test-bucket/locked"
    with lock.acquire(workdir) as held:
        assert held.owner and lock.holder(workdir)["pid"] == os.getpid()
        # Another host's fresh lock is refused; a stale one (no heartbeat) is taken over.
        fileio.write_text_atomic(lock.lock_path(workdir), json.dumps({"host": "elsewhere",
                                 "pid": 1, "run_id": "other", "started": 0}))  # fmt: skip
        with pytest.raises(lock.WorkdirLockedError, match="elsewhere"):
            lock.acquire(workdir)
    assert fileio.exists(lock.lock_path(workdir))  # not ours any more: left in place
    os.environ[lock.STALE_ENV] = "-1"
    try:
        with lock.acquire(workdir) as taken:
            assert taken.owner
    finally:
        del os.environ[lock.STALE_ENV]
    assert not fileio.exists(lock.lock_path(workdir))


def test_damaged_checkpoint_is_moved_aside_on_gcs(gcs_emulator, tmp_path):
    import jax

    import losses
    from models import utils as mutils
    from training import score_model

    config = tiny_config(str(make_npz(tmp_path / "d.npz")))
    model, tx = mutils.get_model(config), losses.get_optimizer(config)
    abstract = score_model.abstract_train_state(config, model, tx)
    state = score_model.create_train_state(config, model, tx, jax.random.key(0))
    workdir = "gs://test-bucket/damaged"
    manager = checkpoints.checkpoint_manager(workdir, 1)
    for step in (1, 2):
        checkpoints.save_checkpoint(manager, state.replace(step=step))
    # Damage step 2: overwrite every array data object with garbage.
    for name in emu.list_objects("test-bucket/damaged/checkpoints/2"):
        if "/d/" in name or name.endswith((".zarray", "manifest.ocdbt")):
            fileio.write_bytes("gs://" + name, b"garbage")
    restored, step = checkpoints.restore_latest_good(manager, abstract, tx)
    manager.close()
    assert step == 1 and int(restored.step) == 1
    left = fileio.listdir(f"{workdir}/checkpoints")
    assert "1" in left and "2" not in left and any(n.startswith("2.corrupt-") for n in left), left


def test_offline_data_files_on_gcs(gcs_emulator, tmp_path):
    """config.data.path may be a gs:// URL (npz here; idx / archives use the same reads)."""
    import datasets_offline

    local = make_npz(tmp_path / "data.npz")
    fileio.write_bytes("gs://test-bucket/data/data.npz", fileio.read_bytes(local))
    splits = datasets_offline.load_offline("npz", "gs://test-bucket/data/data.npz", 3)
    np.testing.assert_array_equal(splits["train"][0], np.load(local)["x_train"])
    assert not (tmp_path / "gs:").exists()

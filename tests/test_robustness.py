"""Mistakes refused in seconds with one line, the workdir lock, and runs that stop on NaN.

`main.py` runs in subprocesses here (the checks happen before JAX / TensorFlow are imported,
so each bad input costs about a second); the lock is exercised with two real trainers.
"""

import gzip
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import cpu_env
import ml_collections
import numpy as np
import pytest

import cli_checks
import utils
from training import lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs/testing/ddpmpp_tiny.py")


def _idx(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim])
    return header + b"".join(struct.pack(">I", s) for s in array.shape) + array.tobytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs: an npz, truncated idx folders (.gz and raw), a non-npz, a file."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)

    def images(n, size=8):
        return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    np.savez(root / "data.npz", x_train=images(32), y_train=np.zeros(32, int),
             x_test=images(16), y_test=np.zeros(16, int))  # fmt: skip
    np.savez(root / "minus_one.npz", x_train=images(8) / 127.5 - 1.0, y_train=np.zeros(8, int))
    (root / "not_an.npz").write_bytes(b"this is text, not a zip archive")
    (root / "a_file").write_text("x")
    for folder, compress in (("idx_gz", True), ("idx_raw", False)):
        (root / folder).mkdir()
        for split, n in (("train", 32), ("t10k", 16)):
            for kind, array in (
                ("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                ("labels-idx1-ubyte", np.zeros(n, np.uint8)),
            ):
                data = _idx(array)
                data = gzip.compress(data) if compress else data
                if split == "train" and kind.startswith("images"):
                    data = data[: len(data) // 2]  # truncated
                (root / folder / f"{split}-{kind}{'.gz' if compress else ''}").write_bytes(data)
    (root / "has_ckpt" / "checkpoints" / "6").mkdir(parents=True)
    (root / "empty").mkdir()
    return root


def _main(workdir, mode="train", *extra, config=TINY, data=None):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config", config,
           f"--workdir={workdir}", f"--mode={mode}"]  # fmt: skip
    if data is not None:
        cmd.append(f"--config.data.path={data}")
    return cmd + list(extra)


def _env():
    return cpu_env.env(1)


def _tfhub_reachable() -> bool:
    try:
        socket.create_connection(("tfhub.dev", 443), timeout=3).close()
        return True
    except OSError:
        return False


# (name, mode, workdir (relative to the inputs), extra flags, words the one line must contain)
BAD_INPUTS = [
    ("config file missing", "train", "w", ["--config=/no/such/config.py"], ["/no/such/config.py"]),
    ("unknown field", "train", "w", ["--config.training.batchsize=4"],
     ["--config.training.batchsize", "batch_size"]),
    ("unknown sweep field", "sweep", "has_ckpt", ["--config.sweep.colums=('P10',)"], ["sweep."]),
    ("workdir is a file", "train", "a_file", [], ["a_file", "is a file"]),
    ("workdir under a file", "train", "a_file/sub", [], ["a_file/sub", "is under"]),
    ("workdir not writable", "train", "/proc/no_workdir", [], ["/proc/no_workdir"]),
    ("snapshot_freq 0", "train", "w", ["--config.training.snapshot_freq=0"], ["snapshot_freq=0"]),
    ("batch_size 0", "train", "w", ["--config.training.batch_size=0"], ["batch_size=0"]),
    ("batch_size < 0", "train", "w", ["--config.training.batch_size=-8"], ["batch_size=-8"]),
    ("n_iters 0", "train", "w", ["--config.training.n_iters=0"], ["n_iters=0"]),
    ("n_jitted_steps 0", "train", "w", ["--config.training.n_jitted_steps=0"], ["n_jitted_steps"]),
    ("truncated .gz idx", "train", "w",
     ["--config.data.source=idx", "--config.data.path={root}/idx_gz"],
     ["train-images-idx3-ubyte.gz", "truncated"]),
    ("truncated raw idx", "train", "w",
     ["--config.data.source=idx", "--config.data.path={root}/idx_raw"],
     ["train-images-idx3-ubyte", "truncated"]),
    ("not an npz", "train", "w", ["--config.data.path={root}/not_an.npz"], ["not_an.npz"]),
    ("npz in [-1, 1]", "train", "w", ["--config.data.path={root}/minus_one.npz"],
     ["x_train", "minus_one.npz", "(x + 1) / 2"]),
    ("data file missing", "train", "w", ["--config.data.path={root}/nothing.npz"],
     ["nothing.npz"]),
    ("sweep without Inception", "sweep", "has_ckpt", [], ["inception_path=none"]),
    ("eval, Inception path missing", "eval", "has_ckpt",
     ["--config.eval.enable_sampling=True", "--config.eval.inception_path={root}/no_inception"],
     ["no_inception"]),
    ("eval, extractor missing", "eval", "has_ckpt",
     ["--config.eval.feature_extractor_path={root}/no_extractor"], ["no_extractor"]),
    ("eval on an empty workdir", "eval", "empty", [], ["empty", "no checkpoint"]),
    ("eval on a mistyped workdir", "eval", "emtpy", [], ["emtpy", "does not exist"]),
    ("eval, no such checkpoint", "eval", "has_ckpt",
     ["--config.eval.begin_ckpt=5", "--config.eval.end_ckpt=5"], ["steps 15..15", "has steps [6]"]),
    ("eval begin > end", "eval", "has_ckpt",
     ["--config.eval.begin_ckpt=3", "--config.eval.end_ckpt=2"], ["begin_ckpt=3"]),
    ("no --workdir", "train", None, [], ["--workdir"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "mode, workdir, extra, words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_in_seconds(files, mode, workdir, extra, words):
    if workdir == "/proc/no_workdir" and not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    if "inception_path=none" in words and _tfhub_reachable():
        pytest.skip("TF-Hub is reachable: the Inception download would work")
    root = str(files)
    extra = [e.format(root=root) for e in extra]
    config = next((e.split("=", 1)[1] for e in extra if e.startswith("--config=")), TINY)
    extra = [e for e in extra if not e.startswith("--config=")]
    path = workdir if workdir is None or workdir.startswith("/") else os.path.join(root, workdir)
    data = None if any(e.startswith("--config.data.path") for e in extra) else f"{root}/data.npz"
    cmd = _main(path, mode, *extra, config=config, data=data)
    if path is None:
        cmd = [c for c in cmd if not c.startswith("--workdir")]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    seconds = time.time() - start
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stderr
    assert seconds < 10, f"{seconds:.1f} s"
    assert 1 <= len(lines) <= 3, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    if workdir == "empty":
        assert os.listdir(path) == []  # no checkpoints/ or eval/ created
    if workdir == "emtpy":
        assert not os.path.exists(path)


def test_sweep_command_is_main_with_sweep_flags(files):
    import sweep

    argv = ["sweep.py", "--config=c.py", "--sweep.columns=('P10',)", "-sweep.repeats", "3"]
    assert sweep.main_argv(argv) == [
        "sweep.py", "--mode=sweep", "--config=c.py", "--config.sweep.columns=('P10',)",
        "--config.sweep.repeats", "3",
    ]  # fmt: skip
    # A mistake is one line, as for main.py.
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--config", TINY,
           f"--workdir={files / 'has_ckpt'}", "--sweep.colums=('P10',)"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and 1 <= len(lines) <= 3, done.stderr
    assert "sweep." in done.stderr, done.stderr


def test_verbose_prints_the_traceback(files):
    cmd = _main(files / "w", "train", "--config.training.n_iters=0", "--verbose",
                data=f"{files}/data.npz")  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert "n_iters=0 must be positive" in done.stderr


def test_checks_import_neither_jax_nor_tensorflow():
    code = "import sys, cli_checks; print(sorted({'jax', 'tensorflow', 'flax'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_inception_urls_match_evaluation():
    import evaluation

    assert cli_checks.INCEPTION_URLS == (evaluation.INCEPTION_TFHUB, evaluation.INCEPTION_V3)


def test_unexpected_error_is_one_line_with_the_traceback_in_the_log(tmp_path, capsys):
    with pytest.raises(SystemExit) as e, cli_checks.one_line_errors(str(tmp_path), False):
        raise KeyError("boom")
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "KeyError: 'boom'" in err[0] and "stdout.txt" in err[0]
    assert "Traceback" in (tmp_path / "stdout.txt").read_text()


# --------------------------------------------------------------------------------------------
# The workdir lock.
# --------------------------------------------------------------------------------------------


def test_second_trainer_is_refused_and_a_dead_trainers_lock_is_taken_over(files, caplog):
    workdir = files / "locked"
    first = subprocess.Popen(
        _main(workdir, "train", "--config.training.n_iters=100000", data=f"{files}/data.npz"),
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while not (workdir / lock.LOCK_NAME).exists():
            assert first.poll() is None and time.time() < deadline, "no lock appeared"
            time.sleep(0.1)
        start = time.time()
        second = subprocess.run(
            _main(workdir, "train", "--config.optim.lr=1e-3", "--config.model.ema_rate=0.9",
                  data=f"{files}/data.npz"),
            capture_output=True, text=True, env=_env(), timeout=120,
        )  # fmt: skip
        assert second.returncode != 0 and time.time() - start < 10
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {first.pid}" in lines[0] and socket.gethostname() in lines[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The first trainer died holding the lock: the next one takes it over with a warning.
    assert lock.read(str(workdir))["pid"] == first.pid
    with lock.acquire(str(workdir)) as held:
        assert held.owner and lock.holder(str(workdir))["pid"] == os.getpid()
    assert "Took over the stale training lock" in caplog.text
    assert not (workdir / lock.LOCK_NAME).exists()


def test_lock_is_reentrant_and_released_only_by_its_owner(tmp_path):
    outer = lock.acquire(str(tmp_path))
    inner = lock.acquire(str(tmp_path))  # run_lib.train inside main.py's lock
    assert outer.owner and not inner.owner
    inner.release()
    assert lock.holder(str(tmp_path))["run_id"] == outer.info["run_id"]
    outer.release()
    assert lock.read(str(tmp_path)) is None


def test_another_hosts_lock_is_stale_only_without_heartbeat(tmp_path, monkeypatch, caplog):
    path = tmp_path / lock.LOCK_NAME
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "run_id": "r1", "started": 0}))
    with pytest.raises(lock.WorkdirLockedError, match="host elsewhere pid 1"):
        lock.acquire(str(tmp_path))
    monkeypatch.setenv(lock.STALE_ENV, "5")
    old = time.time() - 60
    os.utime(path, (old, old))  # no heartbeat for a minute
    assert lock.holder(str(tmp_path)) is None
    with lock.acquire(str(tmp_path)):
        assert "Took over the stale training lock of host elsewhere pid 1" in caplog.text


# --------------------------------------------------------------------------------------------
# A run that stops on non-finite values saves nothing non-finite.
# --------------------------------------------------------------------------------------------


def test_infinite_learning_rate_stops_without_saving_nan_params(files):
    workdir = files / "lr_inf"
    cmd = _main(
        workdir, "train", "--config.optim.lr=inf",
        "--config.training.snapshot_freq_for_preemption=1", "--config.training.n_iters=2",
        "--config.data.image_size=8", "--config.model.ch_mult=(1,)",
        "--config.model.attn_resolutions=(8,)", "--config.training.snapshot_sampling=False",
        data=f"{files}/data.npz",
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode != 0
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("main.py:")]
    assert "Non-finite parameters at step 1" in line and "optim.lr" in line, line
    steps = [d for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
    assert steps == []  # step 1's parameters are NaN: never saved
    assert "Traceback" in (workdir / "stdout.txt").read_text()
    assert not (workdir / lock.LOCK_NAME).exists()  # released on the error


# --------------------------------------------------------------------------------------------
# metrics.jsonl and sweeps.
# --------------------------------------------------------------------------------------------


def test_metric_writer_drops_steps_after_the_resume_point(tmp_path):
    writer = utils.MetricWriter(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, loss=float(step))
    with open(writer.path, "a") as f:
        f.write('{"step": 4, "lo')  # cut short by a kill
    assert writer.drop_after(2) == 2
    writer.write(3, loss=30.0)
    assert [r["step"] for r in utils.read_metrics(writer.path)] == [1, 2, 3]
    assert utils.read_metrics(writer.path)[-1]["loss"] == 30.0


def test_read_metrics_keeps_the_latest_value_per_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 5.0},
             {"step": 1, "loss": 9.0}]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert utils.read_metrics(str(path)) == [
        {"step": 1, "loss": 9.0},
        {"step": 2, "loss": 2.0, "eval_loss": 5.0},
    ]


def test_sweep_whose_every_cell_is_skipped_says_so(tmp_path):
    from configs.testing import ddpmpp_tiny
    from experiments import sweep

    config = ddpmpp_tiny.get_config()
    config.eval.inception_path = "none"
    # VP with N = 1: beta_max / N >= 1, so every P1 / PC1 cell is skipped.
    config.sweep = ml_collections.ConfigDict({"columns": ("P1", "PC1"), "metrics": ()})
    with pytest.raises(ValueError, match="Every cell of the sweep was skipped"):
        sweep.run_sweep(config, str(tmp_path))
    assert not (tmp_path / "sweep").exists()


def test_object_store_workdirs_are_left_to_the_code_that_writes_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_checks.check_workdir("gs://bucket/run", "train")
    cli_checks.check_checkpoints(ml_collections.ConfigDict(), "gs://bucket/run", "eval")
    assert os.listdir(tmp_path) == []  # no local "gs:" folder

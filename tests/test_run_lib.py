"""Training and evaluation end to end on the tiny DDPM++ config with a small .npz dataset.

Covers: resume equals an uninterrupted run bit for bit; a corrupt latest checkpoint is skipped;
a non-finite loss stops the run without saving the bad state; a sharded train step on 8
simulated devices equals the single-device step; evaluate() end to end (loss, bpd, samples)
and its resumption.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cpu_env
import jax
import jax.numpy as jnp
import multiprocess_helpers
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import losses
import run_lib
import utils
from configs.testing import ddpmpp_tiny
from experiments import extractor
from models import utils as mutils
from training import checkpoints, score_model, steps


def make_npz(path, n_train=32, n_test=16, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, size, size, channels), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train),
        x_test=rng.integers(0, 256, (n_test, size, size, channels), dtype=np.uint8),
        y_test=rng.integers(0, 10, n_test),
    )
    return str(path)


def tiny_config(data_path, **overrides):
    """ddpmpp_tiny shrunk further for tests: 8x8 images, one resolution, no sampling."""
    config = ddpmpp_tiny.get_config()
    config.data.path = data_path
    config.data.image_size = 8
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = (8,)
    config.training.snapshot_sampling = False
    # Divisible by the 8 simulated devices of the test session.
    config.training.batch_size = 8
    config.eval.batch_size = 8
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return make_npz(tmp_path_factory.mktemp("data") / "data.npz")


def _params(workdir, step=None):
    config = tiny_config("")
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    abstract = score_model.abstract_train_state(config, model, tx)
    manager = checkpoints.checkpoint_manager(str(workdir), config.training.snapshot_freq)
    step = manager.latest_step() if step is None else step
    state = checkpoints.restore_checkpoint(manager, abstract, step, tx)
    manager.close()
    return state


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory, data_path):
    workdir = tmp_path_factory.mktemp("run6")
    run_lib.train(tiny_config(data_path, **{"training.snapshot_sampling": True}), str(workdir))
    return workdir


def test_resume_equals_uninterrupted_run(tmp_path, data_path, six_step_run):
    workdir = tmp_path / "resumed"
    run_lib.train(tiny_config(data_path, **{"training.n_iters": 3}), str(workdir))
    assert _params(workdir).step == 3
    run_lib.train(tiny_config(data_path), str(workdir))  # resumes at 3, runs to 6
    resumed, full = _params(workdir), _params(six_step_run)
    assert int(resumed.step) == int(full.step) == 6
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(resumed.opt_state), jax.tree.leaves(full.opt_state)):
        np.testing.assert_array_equal(a, b)
    lines = [line for line in open(workdir / "metrics.jsonl") if "training_loss" in line]
    assert len(lines) == 6  # log_freq 1: steps 1-3, then 4-6 after the resume
    assert (workdir / "config.json").exists()
    assert sorted(os.listdir(six_step_run / "checkpoints")) == ["3", "6"]  # keep_period 3
    # snapshot_sampling: a PNG grid and the uint8 samples at every kept snapshot.
    for step in (3, 6):
        folder = six_step_run / "samples" / f"iter_{step}"
        assert (folder / "sample.png").exists()
        assert np.load(folder / "sample.npz")["samples"].shape == (8, 8, 8, 3)


def test_corrupt_latest_checkpoint_is_skipped(tmp_path, six_step_run, caplog):
    workdir = tmp_path / "corrupt"
    shutil.copytree(six_step_run, workdir)
    # Truncate every data file of the latest checkpoint.
    for root, _, files in os.walk(workdir / "checkpoints" / "6"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 16:
                with open(path, "r+b") as f:
                    f.truncate(8)
    config = tiny_config("")
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    abstract = score_model.abstract_train_state(config, model, tx)
    manager = checkpoints.checkpoint_manager(str(workdir), config.training.snapshot_freq)
    state, step = checkpoints.restore_latest_good(manager, abstract, tx)
    assert step == 3 and int(state.step) == 3
    assert "could not be restored" in caplog.text


def _truncate_data_files(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 16 and "METADATA" not in name:
                with open(path, "r+b") as f:
                    f.truncate(8)


def test_corrupt_checkpoint_is_moved_aside_and_written_again(tmp_path, data_path, six_step_run):
    workdir = tmp_path / "rewrite"
    shutil.copytree(six_step_run, workdir)
    _truncate_data_files(workdir / "checkpoints" / "6")
    run_lib.train(tiny_config(data_path), str(workdir))  # restores 3, passes step 6 again
    names = sorted(os.listdir(workdir / "checkpoints"))
    assert names[:2] == ["3", "6"] and len(names) == 3 and names[2].startswith("6.corrupt-")
    resumed, full = _params(workdir), _params(six_step_run)
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(a, b)
    # metrics.jsonl: steps 4-6 were logged before the resume; each is in the file once.
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    keys = [(r["step"], k) for r in lines for k in r if k not in ("step", "time")]
    assert len(keys) == len(set(keys))
    assert [r["step"] for r in lines if "training_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert not (workdir / "train.lock").exists()


def _eval_only_config(data_path, begin, end):
    return tiny_config(data_path, **{
        "eval.begin_ckpt": begin, "eval.end_ckpt": end, "eval.enable_loss": False,
        "eval.enable_bpd": False, "eval.enable_sampling": False, "eval.wait_timeout": 60.0,
    })  # fmt: skip


def test_evaluate_reports_a_corrupt_checkpoint_and_goes_on(tmp_path, data_path, six_step_run,
                                                           caplog):  # fmt: skip
    workdir = tmp_path / "eval_corrupt"
    shutil.copytree(six_step_run, workdir)
    _truncate_data_files(workdir / "checkpoints" / "3")
    start = time.time()
    reports = run_lib.evaluate(_eval_only_config(data_path, 1, 2), str(workdir))
    assert [(r["ckpt"], r["step"]) for r in reports] == [(2, 6)]
    assert "Checkpoint 1 (step 3)" in caplog.text and "is corrupt, skipped" in caplog.text
    assert "3" in os.listdir(workdir / "checkpoints")  # evaluation never moves checkpoints
    # No trainer holds the workdir: a missing step is not waited for, and nothing to
    # evaluate is an error that lists the steps there are.
    with pytest.raises(FileNotFoundError, match=r"has steps \[3, 6\]; corrupt: steps \[3\]"):
        run_lib.evaluate(_eval_only_config(data_path, 1, 1), str(workdir), "eval_1")
    with pytest.raises(FileNotFoundError, match=r"are steps 15..15 .* has steps \[3, 6\]"):
        run_lib.evaluate(_eval_only_config(data_path, 5, 5), str(workdir), "eval_5")
    assert time.time() - start < 60  # eval.wait_timeout is 60 s: nothing waited


def test_evaluate_refuses_a_workdir_without_checkpoints(tmp_path, data_path):
    workdir = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="No checkpoint in .* no training holds"):
        run_lib.evaluate(_eval_only_config(data_path, 1, 1), str(workdir))
    assert not workdir.exists()


def test_checkpoint_of_another_model_is_refused_not_skipped(tmp_path, data_path, six_step_run):
    workdir = tmp_path / "other_model"
    shutil.copytree(six_step_run, workdir)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="shape .* in the checkpoint"):
        run_lib.train(tiny_config(data_path, **{"model.nf": 32}), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]  # nothing moved aside


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_path, monkeypatch):
    workdir = tmp_path / "nan"
    run_lib.train(tiny_config(data_path, **{"training.n_iters": 2}), str(workdir))
    original = score_model.score_loss_fn

    def nan_loss_fn(config, sde, model, train):
        fn = original(config, sde, model, train)
        return lambda key, params, x: fn(key, params, x) * jnp.nan

    monkeypatch.setattr(score_model, "score_loss_fn", nan_loss_fn)
    with pytest.raises(
        FloatingPointError, match=r"Non-finite training_loss at step 3 \(training_loss nan"
    ):
        run_lib.train(tiny_config(data_path), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]


def test_sharded_train_step_matches_single_device(data_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    config = tiny_config(data_path)
    sde, _ = score_model.sde_from_config(config)
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    loss_fn = score_model.score_loss_fn(config, sde, model, train=True)
    images = jax.random.uniform(jax.random.key(1), (1, 8, 8, 8, 3)) * 2 - 1
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        state_sh, batch_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data"))
        step = steps.make_train_step(loss_fn, tx, 0.999, jax.random.key(0), state_sh, batch_sh)
        state = score_model.create_train_state(config, model, tx, jax.random.key(2))
        # Two steps: the first has lr 0 (warm-up), the second moves the params.
        config_state = jax.device_put(state, state_sh)
        config_state, m1 = step(config_state, jax.device_put(images, batch_sh))
        config_state, m2 = step(config_state, jax.device_put(images, batch_sh))
        results.append((config_state, np.concatenate([m1["loss"], m2["loss"]])))
    (single, l1), (sharded, l8) = results
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(jax.tree.leaves(sharded.params)[0].sharding.device_set) == 8


def test_evaluate_loss_bpd_and_resumable_sampling(tmp_path, data_path, six_step_run, monkeypatch):
    workdir = tmp_path / "eval"
    shutil.copytree(six_step_run, workdir)
    overrides = {
        "eval.begin_ckpt": 2,
        "eval.end_ckpt": 2,
        "eval.enable_bpd": True,
        "eval.enable_sampling": True,
        "eval.num_samples": 12,
        "eval.inception_path": "none",
        "eval.wait_timeout": 1.0,
        "model.num_scales": 25,
    }
    config = tiny_config(data_path, **overrides)
    # Kill the sampling after its first round, then resume.
    calls = {"n": 0}
    original = utils.to_uint8

    def flaky_to_uint8(x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(x)

    monkeypatch.setattr(utils, "to_uint8", flaky_to_uint8)
    with pytest.raises(KeyboardInterrupt):
        run_lib.evaluate(config, str(workdir))
    folder = workdir / "eval" / "ckpt_2"
    assert sorted(os.listdir(folder)) == sorted(
        [f for f in os.listdir(folder) if f.startswith("test_ckpt_2_bpd")] + ["samples_0.npz"]
    )
    first_round = np.load(folder / "samples_0.npz")["samples"]
    monkeypatch.setattr(utils, "to_uint8", original)
    reports = run_lib.evaluate(config, str(workdir))
    assert len(reports) == 1 and reports[0]["step"] == 6
    assert np.isfinite(reports[0]["eval_loss"]) and 2.0 < reports[0]["bpd"] < 20.0
    np.testing.assert_array_equal(np.load(folder / "samples_0.npz")["samples"], first_round)
    samples = np.concatenate([np.load(folder / f"samples_{r}.npz")["samples"] for r in range(2)])
    assert samples.shape == (16, 8, 8, 3) and samples.dtype == np.uint8  # 2 rounds of 8
    assert (workdir / "eval" / "summary.md").exists() and (folder / "grid.png").exists()
    # A second run reads the finished report instead of recomputing.
    assert run_lib.evaluate(config, str(workdir)) == reports


# --------------------------------------------------------------------------------------------
# main.py in subprocesses: signals, SIGKILL, two-process jax.distributed.
# --------------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main_cmd(data_path, workdir, n_iters, *extra):
    return [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        "--config",
        os.path.join(ROOT, "configs/testing/ddpmpp_tiny.py"),
        "--mode",
        "train",
        f"--workdir={workdir}",
        f"--config.data.path={data_path}",
        "--config.data.image_size=8",
        "--config.model.ch_mult=(1,)",
        "--config.model.attn_resolutions=(8,)",
        "--config.training.snapshot_sampling=False",
        "--config.training.batch_size=8",
        "--config.eval.batch_size=8",
        f"--config.training.n_iters={n_iters}",
        *extra,
    ]


def _wait_for_metrics_step(workdir, minimum, proc, timeout=240):
    """Waits until the run has logged step `minimum` (metrics.jsonl, one line a step)."""
    deadline, path = time.time() + timeout, os.path.join(workdir, "metrics.jsonl")
    while time.time() < deadline:
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        if os.path.exists(path) and any(r["step"] >= minimum for r in utils.read_metrics(path)):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {minimum} was not logged in time")


def test_sigterm_saves_and_the_next_run_resumes(tmp_path, data_path):
    """SIGTERM (a preemption notice): the run saves the step it is at, exits 0, and the next
    run resumes there. (SIGKILL, where nothing can be saved: test_cloud_storage.py resumes
    from the last checkpoint on disk.)"""
    workdir = str(tmp_path / "killed")
    extra = [
        "--config.training.snapshot_freq_for_preemption=100",
        "--config.training.snapshot_freq=100",
    ]
    proc = subprocess.Popen(_main_cmd(data_path, workdir, 1000, *extra), env=cpu_env.env(8),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    _wait_for_metrics_step(workdir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    (saved,) = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    assert saved >= 2 and f"Received SIGTERM: checkpoint saved at step {saved}" in out, out[-2000:]
    done = subprocess.run(_main_cmd(data_path, workdir, saved + 2, *extra), env=cpu_env.env(8),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Resumed from checkpoint step {saved}" in done.stderr
    assert int(_params(workdir).step) == saved + 2


def test_two_process_distributed_run_equals_single_process(tmp_path, data_path, six_step_run):
    """Two processes x 4 devices train 3 steps; the parameters equal those of the one-process,
    8-device run (`six_step_run`, same config and data) at its step-3 checkpoint."""
    multi = str(tmp_path / "multi")
    multiprocess_helpers.run_two_processes(
        lambda i, *flags: _main_cmd(data_path, multi, 3, *flags),
        multiprocess_helpers.env(4),
        port_base=20000,
        timeout=400,
    )
    a, b = _params(multi), _params(six_step_run, step=3)
    assert int(a.step) == int(b.step) == 3
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_stats_and_evaluate_with_inception_stand_in_and_offline_extractor(
    tmp_path, data_path, six_step_run, monkeypatch
):
    """--mode stats then evaluate(): FID / IS / KID through the TF-GAN path with a random
    Inception-shaped SavedModel, and fd_/kid_ with a (briefly) trained offline extractor."""
    import tensorflow as tf
    from test_evaluation import _StandInInception

    inception_dir = str(tmp_path / "inception")
    tf.saved_model.save(_StandInInception(), inception_dir)
    data = np.load(data_path)
    extractor_dir = str(tmp_path / "extractor")
    extractor.train_feature_extractor(
        data["x_train"], data["y_train"], 10, extractor_dir, steps=5, batch_size=8, name="tiny"
    )
    workdir = tmp_path / "eval_fid"
    shutil.copytree(six_step_run, workdir)
    monkeypatch.chdir(tmp_path)  # --mode stats writes the original's assets/stats/ path here
    config = tiny_config(
        data_path,
        **{
            "eval.begin_ckpt": 2,
            "eval.end_ckpt": 2,
            "eval.enable_loss": False,
            "eval.enable_sampling": True,
            "eval.num_samples": 16,
            "eval.inception_path": inception_dir,
            "eval.feature_extractor_path": extractor_dir,
        },
    )
    stats_path = run_lib.compute_stats(config, str(workdir))
    assert stats_path == os.path.join("assets", "stats", "cifar10_stats.npz")
    assert np.load(stats_path)["pool_3"].shape == (32, 2048)  # every training image
    (report,) = run_lib.evaluate(config, str(workdir), "eval_fid")
    for key in ("fid", "kid", "inception_score", "fd_tiny", "kid_tiny"):
        assert np.isfinite(report[key]), report
    assert report["fid"] > 0 and report["inception_score"] >= 1.0


def test_converted_checkpoint_restores_without_opt_state(tmp_path, six_step_run):
    """models.convert writes {step, params, ema_params}; run_lib restores it with a fresh
    optimizer state (for evaluation or fine-tuning)."""
    from models import convert

    trained = _params(six_step_run)
    workdir = tmp_path / "converted"
    convert.save_converted(str(workdir), {"params": trained.ema_params}, step=3)
    state = _params(workdir, 3)
    assert int(state.step) == 3
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(trained.ema_params)):
        np.testing.assert_array_equal(a, b)
    counts = [leaf for leaf in jax.tree.leaves(state.opt_state) if np.ndim(leaf) == 0]
    assert counts and all(int(c) == 0 for c in counts)  # a fresh Adam state

"""The shared runtime (training/): the fused train step's scan and unrolled branches agree, the
loop switch, and the one host loop (non-finite refusals, checkpoints, hooks, signals)."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.serialization import replica_slices

import losses
import utils
from configs.testing import ddpmpp_tiny
from models import utils as mutils
from training import checkpoints, loop, score_model, steps
from training.state import TrainState, new_train_state


def _tiny_config():
    config = ddpmpp_tiny.get_config()
    config.data.image_size = 8
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = (8,)
    config.optim.warmup = 0  # every step moves the params
    return config


def _train_step(device_loop):
    config = _tiny_config()
    sde, _ = score_model.sde_from_config(config)
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    loss_fn = score_model.score_loss_fn(config, sde, model, train=True)
    step = steps.make_train_step(loss_fn, tx, 0.9, jax.random.key(0), device_loop=device_loop)
    state = score_model.init_train_state(config, model, tx, jax.random.key(1))
    return step, state


def test_scan_train_step_equals_the_unrolled_one():
    """The accelerator branch (`lax.scan` over n_jitted_steps) and the CPU branch (unrolled)
    run the same two optimizer steps: same losses, params, EMA and Adam state."""
    images = jax.random.uniform(jax.random.key(2), (2, 4, 8, 8, 3)) * 2 - 1
    results = []
    for device_loop in (True, False):
        step, state = _train_step(device_loop)
        initial = jax.device_get(state.params)  # before the step donates `state`
        state, metrics = step(state, images)
        results.append((jax.device_get(state), jax.device_get(metrics)))
    (scanned, m_scan), (unrolled, m_unrolled) = results
    assert int(scanned.step) == int(unrolled.step) == 2
    assert m_scan["loss"].shape == (2,) and m_scan["finite"].all()
    # Float32: the two programs may fuse differently, so compare to round-off.
    np.testing.assert_allclose(m_scan["loss"], m_unrolled["loss"], rtol=1e-5)
    for field in ("params", "ema_params", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(scanned, field)),
                        jax.tree.leaves(getattr(unrolled, field)), strict=True):  # fmt: skip
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The steps moved the params (the comparison is not between two unchanged states).
    moved = jax.tree.leaves(scanned.params)[0] - jax.tree.leaves(initial)[0]
    assert np.abs(moved).max() > 0


def test_init_train_state_is_the_jitted_create_train_state():
    config = _tiny_config()
    model, tx = mutils.get_model(config), losses.get_optimizer(config)
    state = score_model.init_train_state(config, model, tx, jax.random.key(3))
    expected = score_model.create_train_state(config, model, tx, jax.random.key(3))
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode,expect_scan", [("auto", True), ("device", True), ("host", False)])
def test_loops_env_picks_the_train_step_branch(monkeypatch, mode, expect_scan):
    monkeypatch.setenv(utils.LOOPS_ENV, mode)
    assert utils.device_loops() is expect_scan
    tx = optax.sgd(0.1)
    state = new_train_state({"w": jnp.ones(3)}, tx)
    step = steps.make_train_step(
        lambda key, params, x: jnp.sum((params["w"] - x) ** 2), tx, 0.5, jax.random.key(0)
    )
    jaxpr = str(jax.make_jaxpr(step)(state, jnp.zeros((2, 3))))
    assert ("scan" in jaxpr) is expect_scan
    assert utils.device_loops(override=not expect_scan) is (not expect_scan)


def test_loops_env_refuses_an_unknown_mode(monkeypatch):
    monkeypatch.setenv(utils.LOOPS_ENV, "gpu")
    with pytest.raises(ValueError, match="SCORE_SDE_LOOPS='gpu' is not one of"):
        utils.device_loops()


# --------------------------------------------------------------------------------------------
# The host loop, on a quadratic loss (milliseconds per step).
# --------------------------------------------------------------------------------------------


def _quadratic(lr=0.1, target=2.0):
    tx = optax.sgd(lr)
    step = steps.make_train_step(
        lambda key, params, x: jnp.mean((params["w"] - target * x) ** 2), tx, 0.5, jax.random.key(0)
    )
    return new_train_state({"w": jnp.zeros(4)}, tx), step


def _batches():
    while True:
        yield jnp.ones((1, 4))


def _schedule(**kw):
    values = dict(n_iters=6, log_freq=2, snapshot_freq=3, preemption_freq=2, eval_freq=3)
    return loop.Schedule(**{**values, **kw})


def test_loop_logs_saves_and_calls_hooks(tmp_path):
    state, step = _quadratic()
    manager = checkpoints.checkpoint_manager(str(tmp_path), 3)
    writer = utils.MetricWriter(str(tmp_path), tensorboard=False)
    calls = []
    final = loop.run(
        state, step, _batches(), _schedule(), first_step=0, manager=manager, writer=writer,
        on_eval=lambda s, k: calls.append(("eval", k)),
        on_snapshot=lambda s, k: calls.append(("snapshot", k)),
    )  # fmt: skip
    writer.close()
    assert int(final.step) == 6
    # SGD on mean((w - 2)^2): w <- w - 0.1 * (w - 2) / 2, so w_k = 2 (1 - 0.95^k).
    np.testing.assert_allclose(final.params["w"], 2.0 * (1 - 0.95**6), rtol=1e-6)
    assert calls == [("eval", 3), ("snapshot", 3), ("eval", 6), ("snapshot", 6)]
    assert checkpoints.saved_steps(manager) == [3, 6]  # keep every 3rd + the latest
    lines = utils.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in lines] == [2, 4, 6] and all("steps_per_sec" in r for r in lines)


def test_loop_flushes_metric_lines_before_each_checkpoint(tmp_path, monkeypatch):
    """A remote workdir's lines are buffered; the ones up to a checkpoint must be in
    metrics.jsonl before that checkpoint exists (a kill right after the save keeps them)."""
    state, step = _quadratic()
    manager = checkpoints.checkpoint_manager(str(tmp_path / "ckpt"), 3)
    writer = utils.MetricWriter(str(tmp_path), tensorboard=False, flush_every_s=1e9)
    writer.remote = True  # buffer lines the way a gs:// workdir does
    on_disk_at_save = []
    save = checkpoints.save_checkpoint

    def recording_save(mgr, st):
        path = tmp_path / "metrics.jsonl"
        on_disk_at_save.append([r["step"] for r in utils.read_metrics(str(path))])
        return save(mgr, st)

    monkeypatch.setattr(checkpoints, "save_checkpoint", recording_save)
    schedule = _schedule(log_freq=1, snapshot_freq=3, preemption_freq=3)
    loop.run(state, step, _batches(), schedule, first_step=0, manager=manager, writer=writer)
    assert on_disk_at_save == [[1, 2, 3], [1, 2, 3, 4, 5, 6]]


def test_loop_refuses_to_save_non_finite_parameters(tmp_path):
    """lr = inf: the loss of step 1 is finite, but the parameters it produces are not. The
    loop stops before any save, naming the step; no checkpoint holds NaN."""
    state, step = _quadratic(lr=float("inf"))
    manager = checkpoints.checkpoint_manager(str(tmp_path), 1)
    schedule = _schedule(snapshot_freq=1, preemption_freq=1, log_freq=10)
    with pytest.raises(loop.NonFiniteError, match=r"Non-finite parameters at step 1 \(loss 4"):
        loop.run(state, step, _batches(), schedule, first_step=0, manager=manager)
    assert checkpoints.saved_steps(manager) == []


def test_loop_saves_and_exits_on_sigterm(tmp_path):
    state, step = _quadratic()
    manager = checkpoints.checkpoint_manager(str(tmp_path), 100)

    def batches():
        yield jnp.ones((1, 4))
        os.kill(os.getpid(), signal.SIGTERM)  # arrives during the second step
        while True:
            yield jnp.ones((1, 4))

    schedule = _schedule(n_iters=100, snapshot_freq=100, preemption_freq=100, log_freq=100)
    before = signal.getsignal(signal.SIGTERM)
    final = loop.run(state, step, batches(), schedule, first_step=0, manager=manager)
    assert int(final.step) == 2 and checkpoints.saved_steps(manager) == [2]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"n_iters": 0}, r"config.training.n_iters=0 must be positive"),
        ({"snapshot_freq": 0}, r"snapshot_freq=0 must be positive"),
        (
            {"log_freq": 3, "steps_per_call": 2},
            r"log_freq=3 must be a multiple of .*n_jitted_steps=2",
        ),
        ({"eval_freq": -1}, r"eval_freq=-1 must be >= 0"),
    ],
)
def test_schedule_names_the_bad_field(fields, match):
    with pytest.raises(ValueError, match=match):
        _schedule(**{"log_freq": 2, "snapshot_freq": 2, "preemption_freq": 2, "eval_freq": 2,
                     "steps_per_call": 1, **fields}).check()  # fmt: skip


def test_restore_skips_a_corrupt_checkpoint(tmp_path):
    state = new_train_state({"w": jnp.arange(3.0)}, optax.sgd(1.0))
    manager = checkpoints.checkpoint_manager(str(tmp_path), 1)
    for k in (1, 2):
        checkpoints.save_checkpoint(manager, state.replace(step=jnp.asarray(k)))
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2"):
        for name in files:
            if os.path.getsize(os.path.join(root, name)) > 16:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(8)
    abstract = jax.eval_shape(lambda: state)
    restored, step = checkpoints.restore_latest_good(manager, abstract)
    assert step == 1 and isinstance(restored, TrainState)
    np.testing.assert_array_equal(restored.params["w"], [0.0, 1.0, 2.0])


def test_small_replicated_arrays_are_saved_by_one_replica(tmp_path):
    """Orbax's replica-parallel save slices a replicated array across the devices (one compiled
    `slice` per shape and device); below `REPLICA_PARALLEL_MIN_BYTES` one replica writes it."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    small = jax.device_put(jnp.arange(64.0), replicated)
    checkpoints.checkpoint_manager(str(tmp_path), 1).close()  # registers the handler
    min_bytes = ocp.type_handlers.get_type_handler(jax.Array)._min_slice_bytes_for_replica_parallel

    def slice_args(threshold):
        return replica_slices.get_replica_slices(
            small, replica_id=0, use_replica_parallel=True,
            min_slice_bytes_for_replica_parallel=threshold,
        ).replica_slices[0].slice_args  # fmt: skip

    assert len(jax.devices()) > 1 and min_bytes == checkpoints.REPLICA_PARALLEL_MIN_BYTES
    assert slice_args(None) is not None  # Orbax's default: sliced across the 8 devices
    assert slice_args(min_bytes) is None


def test_a_call_that_does_not_fit_the_ahead_compiled_step_says_so(caplog):
    """`compile_ahead` for one batch shape, a call with another: the step still runs (jit
    compiles for it) and says once, in the log, that it compiled a second executable."""
    step, state = _train_step(device_loop=False)
    step.compile_ahead(state, jax.ShapeDtypeStruct((1, 4, 8, 8, 3), jnp.float32))
    images = jax.random.uniform(jax.random.key(2), (1, 2, 8, 8, 3)) * 2 - 1
    with caplog.at_level("WARNING"):
        for _ in range(2):
            state, metrics = step(state, images)
    warnings = [r for r in caplog.records if "compiled ahead" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert int(state.step) == 2 and bool(metrics["finite"].all())

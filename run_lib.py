"""Training and evaluation for score-based models (the paper's `run_lib.py`, rebuilt).

Orchestration only: `train`, `evaluate` and `compute_stats` build their objects from the config
and hand them to the shared runtime in `training/` (devices, checkpoints, the host loop,
evaluation rounds); the math lives in `sde_lib`, `losses`, `sampling`, `likelihood`, `models`.

Devices: one `jax.jit` code path. The batch is sharded over a 1-D `data` mesh of every device
(all hosts), the train state is replicated; with one device this is the plain single-device
program. Multi-host runs call `jax.distributed.initialize` first (see main.py flags).

Workdir layout:
  config.json                 the resolved config
  checkpoints/<step>/         Orbax checkpoints {step, params, ema_params, opt_state}
  metrics.jsonl               one JSON line per log / eval event
  tensorboard/                training_loss, eval_loss scalars
  samples/iter_<step>/        sample.png (grid) and sample.npz (uint8) at each snapshot
  <eval_folder>/              evaluate(): per-checkpoint results (see `evaluate`)

The workdir may be local or on an object store (gs://): every file goes through `fileio` (and
Orbax for checkpoints). Multi-host evaluation: process 0 writes every file and decides what is
already done (`devices.main_value`), so all processes agree on the resume state.
"""

from __future__ import annotations

import contextlib
import json
import time

import jax
import numpy as np
from absl import logging

import datasets
import evaluation
import fileio
import losses
import sampling
import utils
from models import utils as mutils
from training import checkpoints, devices, lock, loop, sample_eval, score_model, steps

NONFINITE_HINT = (
    "Lower optim.lr, check the data scaling (data.centered) or set a smaller optim.grad_clip, "
    "then resume."
)

# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


def _data_iterators(config, start_item: int):
    """Training batches `[n_jitted_steps, B, H, W, C]` from `start_item` on; eval `[B, ...]`."""
    train_ds, _, _ = datasets.get_dataset(
        config,
        additional_dim=config.training.n_jitted_steps,
        uniform_dequantization=config.data.uniform_dequantization,
        start_step=start_item,
    )
    _, eval_ds, _ = datasets.get_dataset(
        config, uniform_dequantization=config.data.uniform_dequantization
    )
    return iter(train_ds), _repeat(eval_ds)


def _repeat(dataset):
    while True:
        yielded = False
        for item in dataset:
            yielded = True
            yield item
        if not yielded:
            raise ValueError("the evaluation split yields no batch: lower eval.batch_size")


def _snapshot_sampler(config, sde, model, eps):
    """`sample_fn(key, params) -> images in [0, 1]` with the config's sampler."""
    shape = (config.training.batch_size, *datasets.image_shape(config))
    fn = sampling.get_sampling_fn(
        config, sde, model, shape, datasets.get_data_inverse_scaler(config), eps
    )
    return lambda key, params: devices.gather(fn(key, params)[0])


def train(config, workdir: str):
    """Runs training (the original `run_lib.train`); resumes from the last good checkpoint.

    Holds the workdir's training lock (`training/lock.py`) throughout: a second trainer on the
    same workdir is refused, naming this one's host and pid.
    """
    schedule = loop.Schedule.from_config(config.training)
    devices.check_batch_size(config.training.batch_size, "training.batch_size")
    devices.check_batch_size(config.eval.batch_size, "eval.batch_size")
    utils.quiet_library_logs()
    workdir = fileio.makedirs(workdir)
    held = lock.acquire(workdir) if utils.is_main_process() else contextlib.nullcontext()
    with held:
        return _train(config, workdir, schedule)


def _train(config, workdir: str, schedule: loop.Schedule):
    """`train` once the workdir is locked."""
    utils.write_config(config, workdir)
    sde, sampling_eps = score_model.sde_from_config(config)
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    base_key = jax.random.key(config.seed)
    mesh = devices.make_mesh()
    state_sharding = devices.replicated(mesh)
    train_sharding = devices.batch_sharding(mesh, steps_axis=True)
    eval_sharding = devices.batch_sharding(mesh)

    init_key = jax.random.fold_in(base_key, -1 % 2**31)
    manager = checkpoints.checkpoint_manager(workdir, config.training.snapshot_freq)
    abstract = score_model.abstract_train_state(config, model, tx)
    train_step = steps.make_train_step(
        score_model.score_loss_fn(config, sde, model, train=True),
        tx,
        config.model.ema_rate,
        base_key,
        state_sharding,
        train_sharding,
        loss_name="training_loss",
    )
    # Compiled before the state exists: XLA's transient compile memory (~1.5 GB for the CIFAR-10
    # models) would otherwise sit on top of it and set the run's peak RSS on CPU.
    image_shape = datasets.image_shape(config)
    batch_shape = (schedule.steps_per_call, config.training.batch_size, *image_shape)
    train_step.compile_ahead(abstract, jax.ShapeDtypeStruct(batch_shape, np.float32))

    def init():
        state = score_model.init_train_state(config, model, tx, init_key)
        logging.info("Starting from scratch (%d parameters).", utils.count_params(state.params))
        return state

    try:
        state = checkpoints.restore_or_init(manager, abstract, init, tx)
    except checkpoints.CheckpointMismatchError:
        manager.close()
        raise
    devices.barrier("train:start")  # every host restored: the first collective follows
    state = jax.device_put(state, state_sharding)
    initial_step = int(state.step)

    train_iter, eval_iter = _data_iterators(config, initial_step // schedule.steps_per_call)
    scaler = datasets.get_data_scaler(config)
    eval_step = steps.make_eval_step(
        score_model.score_loss_fn(config, sde, model, train=False),
        base_key,
        state_sharding,
        eval_sharding,
    )
    writer = utils.MetricWriter(workdir)
    batches = (devices.to_global(scaler(b["image"]), train_sharding) for b in train_iter)

    def on_eval(state, step):
        images = devices.to_global(scaler(next(eval_iter)["image"]), eval_sharding)
        writer.write(step, eval_loss=float(eval_step(state, images)))

    on_snapshot = None
    if config.training.snapshot_sampling:
        sample_fn = _snapshot_sampler(config, sde, model, sampling_eps)

        def on_snapshot(state, step):
            utils.save_sample_grid(
                sample_fn(jax.random.fold_in(base_key, step), state.ema_params),
                fileio.join(workdir, "samples", f"iter_{step}"),
            )

    state = loop.run(
        state,
        train_step,
        batches,
        schedule,
        first_step=initial_step,
        manager=manager,
        writer=writer,
        on_eval=on_eval,
        on_snapshot=on_snapshot,
        images_per_step=config.training.batch_size,
        nonfinite_hint=NONFINITE_HINT,
    )
    manager.close()
    writer.close()
    return state


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------


def _wait_for_checkpoint(manager, step: int, config, workdir: str) -> bool:
    """Waits for checkpoint `step` while a trainer holds the workdir's lock.

    Returns False (after a warning) when the step will not appear: no trainer holds the lock,
    the final step `n_iters` is already saved, or nothing changed for `eval.wait_timeout` s.
    """
    timeout = float(config.eval.get("wait_timeout", 3600.0))
    last_change = time.time()
    seen = None
    while True:
        all_steps = checkpoints.saved_steps(manager)
        if step in all_steps:
            return True
        trainer = lock.holder(workdir)
        if trainer is None or (all_steps and max(all_steps) >= config.training.n_iters):
            why = "no training holds the workdir" if trainer is None else "training is finished"
            logging.warning("Checkpoint step %d does not exist and %s.", step, why)
            return False
        if all_steps != seen:
            seen, last_change = all_steps, time.time()
        if time.time() - last_change > timeout:
            logging.warning("Gave up waiting %.0fs for checkpoint step %d.", timeout, step)
            return False
        logging.info(
            "Waiting for checkpoint step %d in %s (trainer: %s) ...",
            step, manager.directory, lock.describe(trainer),
        )  # fmt: skip
        time.sleep(min(60.0, max(timeout / 10, 0.1)))


def _check_something_to_evaluate(config, workdir: str) -> None:
    """Refuses at once a workdir without checkpoints that no trainer is writing to."""
    ckpt_dir = checkpoints.checkpoint_dir(workdir)
    if devices.main_value(
        lambda: bool(checkpoints.step_dirs(workdir)) or lock.holder(workdir) is not None
    ):
        return
    raise FileNotFoundError(
        f"No checkpoint in {ckpt_dir} and no training holds {lock.lock_path(workdir)}: nothing "
        f"to evaluate (eval.begin_ckpt..end_ckpt = {config.eval.begin_ckpt}.."
        f"{config.eval.end_ckpt}). Check --workdir, train (--mode train) or convert a checkpoint "
        "(python -m models.convert)."
    )


def _no_checkpoint_error(config, manager, skipped: list[int]) -> FileNotFoundError:
    f, e = config.training.snapshot_freq, config.eval
    corrupt = f"; corrupt: steps {skipped}" if skipped else ""
    return FileNotFoundError(
        f"No checkpoint to evaluate: eval.begin_ckpt..end_ckpt = {e.begin_ckpt}..{e.end_ckpt} "
        f"are steps {e.begin_ckpt * f}..{e.end_ckpt * f} (k * training.snapshot_freq {f}), but "
        f"{manager.directory} has steps {checkpoints.saved_steps(manager)}{corrupt}."
    )


def _eval_loss(config, eval_step, state, mesh) -> float:
    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
    scaler = datasets.get_data_scaler(config)
    sharding = devices.batch_sharding(mesh)
    batches = utils.progress_iter(eval_ds, "eval loss")
    values = [
        float(eval_step(state, devices.to_global(scaler(b["image"]), sharding))) for b in batches
    ]
    return float(np.mean(values))


def _sample_checkpoint(config, state, sde, model, eps, folder: str, ckpt: int, mesh):
    """`eval.num_samples` uint8 samples of checkpoint `ckpt`, in resumable rounds."""
    b = config.eval.batch_size
    shape = (b, *datasets.image_shape(config))
    sampling_fn = sampling.get_sampling_fn(
        config,
        sde,
        model,
        shape,
        datasets.get_data_inverse_scaler(config),
        eps,
        sharding=devices.batch_sharding(mesh),
    )
    sample_key = jax.random.fold_in(jax.random.key(config.seed + 1), ckpt)
    rounds = sample_eval.sample_rounds(
        sampling_fn, state.ema_params, sample_key, config.eval.num_samples, b, folder,
        desc=f"ckpt {ckpt} sampling",
    )  # fmt: skip
    return rounds["samples"]


def _evaluate_checkpoint(config, ckpt, step, state, sde, model, eps, eval_step, folder, mesh):
    """The report of one checkpoint: eval loss, bits/dim and sample metrics, as enabled."""
    report = {"ckpt": ckpt, "step": step}
    if config.eval.enable_loss:
        report["eval_loss"] = _eval_loss(config, eval_step, state, mesh)
    if config.eval.enable_bpd:
        bpd_key = jax.random.fold_in(jax.random.key(config.seed + 1), ckpt)
        report["bpd"] = sample_eval.bpd_rounds(
            config, state.ema_params, sde, model, folder, bpd_key, mesh, f"ckpt_{ckpt}"
        )
    if config.eval.enable_sampling:
        samples = _sample_checkpoint(config, state, sde, model, eps, folder, ckpt, mesh)
        utils.save_sample_grid(samples[:64] / 255.0, folder, "grid")
        report.update(sample_eval.sample_metrics(config, samples))
    return report


def evaluate(config, workdir: str, eval_folder: str = "eval") -> list[dict]:
    """Evaluates checkpoints `eval.begin_ckpt..eval.end_ckpt` (ids in units of snapshot_freq).

    For each: eval loss on EMA params, bits/dim (`eval.enable_bpd`), samples and their metrics
    (`eval.enable_sampling`). Results go to `<workdir>/<eval_folder>/metrics.jsonl` (one line
    per checkpoint), `report_<k>.json` and a `summary.md` table. Everything is resumable.
    """
    devices.check_batch_size(config.eval.batch_size, "eval.batch_size")
    utils.quiet_library_logs()
    workdir = fileio.absolute(workdir)
    _check_something_to_evaluate(config, workdir)
    eval_dir = fileio.makedirs(fileio.join(workdir, eval_folder))
    sde, sampling_eps = score_model.sde_from_config(config)
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    mesh = devices.make_mesh()
    state_sharding = devices.replicated(mesh)
    abstract = score_model.abstract_train_state(config, model, tx)
    eval_step = steps.make_eval_step(
        score_model.score_loss_fn(config, sde, model, train=False),
        jax.random.key(config.seed + 1),
        state_sharding,
        devices.batch_sharding(mesh),
    )
    writer = utils.MetricWriter(eval_dir, tensorboard=False)
    reports, corrupt = [], []
    with checkpoints.checkpoint_manager(workdir, config.training.snapshot_freq) as manager:
        for ckpt in range(config.eval.begin_ckpt, config.eval.end_ckpt + 1):
            step = ckpt * config.training.snapshot_freq
            report_path = fileio.join(eval_dir, f"report_{ckpt}.json")
            done = devices.main_value(lambda p=report_path: _read_report(p))
            if done is not None:
                reports.append(done)
                continue
            # Every process polls; process 0's answer counts (hosts agree on what comes next).
            if not devices.agree(_wait_for_checkpoint(manager, step, config, workdir)):
                if devices.agree(step < max(checkpoints.saved_steps(manager), default=-1)):
                    continue  # a gap (e.g. a deleted checkpoint): later ones exist
                break
            restored = _restore_or_report(manager, abstract, ckpt, step, tx)
            if restored is None:
                corrupt.append(step)
                continue
            state = jax.device_put(restored, state_sharding)
            folder = fileio.makedirs(fileio.join(eval_dir, f"ckpt_{ckpt}"))
            report = _evaluate_checkpoint(
                config, ckpt, step, state, sde, model, sampling_eps, eval_step, folder, mesh
            )
            writer.write(step, **{k: v for k, v in report.items() if k not in ("ckpt", "step")})
            writer.flush()
            if utils.is_main_process():
                fileio.write_text_atomic(report_path, json.dumps(report, indent=2))
            reports.append(report)
        writer.close()
        if not reports:
            raise _no_checkpoint_error(config, manager, corrupt)
    _write_summary(reports, fileio.join(eval_dir, "summary.md"))
    return reports


def _read_report(path: str) -> dict | None:
    """A finished checkpoint's report, or None (process 0 reads it; see `evaluate`)."""
    return json.loads(fileio.read_text(path)) if fileio.exists(path) else None


def _restore_or_report(manager, abstract, ckpt: int, step: int, tx):
    """Checkpoint `step`, or None after one error line when it is damaged (evaluation goes on
    to the next; it never moves a checkpoint). A checkpoint of another model raises."""
    try:
        return checkpoints.restore_checkpoint(manager, abstract, step, tx)
    except checkpoints.CheckpointMismatchError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: report it, go on
        logging.error("Checkpoint %d (step %d) in %s is corrupt, skipped: %s",
                      ckpt, step, manager.directory, checkpoints.error_line(e))  # fmt: skip
        return None


def _write_summary(reports: list[dict], path: str) -> None:
    if not reports or not utils.is_main_process():
        return
    keys = sorted({k for r in reports for k in r} - {"ckpt", "step"})
    lines = ["| " + " | ".join(["ckpt", "step", *keys]) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in reports:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join([str(r["ckpt"]), str(r["step"]), *cells]) + " |")
    fileio.write_text_atomic(path, "\n".join(lines) + "\n")


def compute_stats(config, workdir: str) -> str:
    """`--mode stats`: Inception pool_3 activations of the whole training split (the FID
    reference of the original: no dequantisation, no flip, uint8 input, every image).

    Writes `config.eval.stats_path`, or the original's `assets/stats/<dataset>_stats.npz`
    (relative to the current directory), where `evaluate` looks for it.
    """
    del workdir  # the original writes next to the code, not into the workdir
    stats_config = config.copy_and_resolve_references()
    with stats_config.unlocked():
        stats_config.data.random_flip = False
        stats_config.data.uniform_dequantization = False
    train_ds, _, _ = datasets.get_dataset(stats_config, evaluation=True)
    inceptionv3 = config.data.image_size >= 256
    model = evaluation.get_inception_model(inceptionv3, path=config.eval.inception_path)
    pools = []
    for batch in utils.progress_iter(train_ds, "stats"):
        feats = evaluation.run_inception_distributed(
            utils.to_uint8(batch["image"]), model, inceptionv3=inceptionv3
        )
        pools.append(devices.allgather_host(feats["pool_3"]))  # every host's block
    path = config.eval.stats_path
    if not path:
        filename = evaluation.default_stats_filename(config)
        if filename is None:
            raise ValueError(
                f"No default statistics file name for {config.data.dataset!r}: set "
                "--config.eval.stats_path=<file.npz>"
            )
        path = fileio.join(evaluation.STATS_DIR, filename)  # where evaluate() looks
    if utils.is_main_process():
        fileio.save_npz(path, pool_3=np.concatenate(pools))
    logging.info("Wrote %d pool_3 activations to %s", sum(len(p) for p in pools), path)
    return path

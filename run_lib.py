"""Training and evaluation for score-based models (the paper's `run_lib.py`, rebuilt).

Orchestration only: objects are built from the config by small helpers, the math lives in
`sde_lib`, `losses`, `sampling`, `likelihood` and `models`.

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
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import losses
import sde_lib
import utils

# --------------------------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------------------------


def get_sde(config) -> tuple[sde_lib.SDE, float]:
    """The forward SDE of `config.training.sde` and the sampling eps of the original run_lib."""
    name = config.training.sde.lower()
    m = config.model
    if name == "vesde":
        return sde_lib.VESDE(m.sigma_min, m.sigma_max, m.num_scales), 1e-5
    if name in ("vpsde", "subvpsde"):
        cls = sde_lib.VPSDE if name == "vpsde" else sde_lib.subVPSDE
        return cls(m.beta_min, m.beta_max, m.num_scales), 1e-3
    raise ValueError(
        f"Unknown config.training.sde {config.training.sde!r}; valid: {sorted(sde_lib.SDES)}"
    )


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: keys are derived from `step`, never stored."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def init_params(config, model, key) -> Any:
    """Initial network params (the original `init_model`): dummy batch of the data shape."""
    size, channels = config.data.image_size, config.data.num_channels
    x = jnp.zeros((1, size, size, channels), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32 if _int_labels(config) else jnp.float32)
    params_key, dropout_key = jax.random.split(key)
    return model.init({"params": params_key, "dropout": dropout_key}, x, labels, train=False)[
        "params"
    ]


def _int_labels(config) -> bool:
    """NCSN-family networks take integer noise-level labels."""
    return config.model.name in ("ncsn", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256")


def create_train_state(config, model, tx, key) -> TrainState:
    """Step 0, EMA starting at the initial params (as the JAX original)."""
    params = init_params(config, model, key)
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        # A distinct copy: params and ema_params are donated separately in the train step.
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def get_loss_fn(config, sde, model, train: bool):
    """`loss_fn(key, params, x)` for the config's objective (continuous / SMLD / DDPM)."""
    from models import utils as mutils

    continuous = config.training.continuous

    def score_fn(params, x, t, key):
        return mutils.get_score_fn(sde, model, params, train=train, continuous=continuous)(
            x, t, key
        )

    def model_fn(params, x, labels, key):
        return mutils.get_model_fn(model, params, train=train)(x, labels, key)

    return losses.get_loss_fn(
        sde,
        score_fn=score_fn,
        model_fn=model_fn,
        continuous=continuous,
        reduce_mean=config.training.reduce_mean,
        likelihood_weighting=config.training.likelihood_weighting,
    )


def make_train_step(loss_fn, tx, ema_rate: float, base_key, state_sharding, batch_sharding):
    """Jitted `train_step(state, images[n_jitted, B, ...]) -> (state, losses[n_jitted])`.

    The inner steps run in a `lax.scan` (the original `n_jitted_steps`); each derives its key
    as `fold_in(base_key, step)`, so a resumed run repeats an uninterrupted one exactly.
    """

    def one_step(state: TrainState, x):
        key = jax.random.fold_in(base_key, state.step)
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(key, state.params, x)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # EMA with a fixed rate from the initial params (JAX original; no warm-up).
        ema = jax.tree.map(
            lambda e, p: e * ema_rate + p * (1.0 - ema_rate), state.ema_params, params
        )
        new = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new, loss

    def train_step(state, images):
        if jax.default_backend() != "cpu":
            return jax.lax.scan(one_step, state, images)
        # XLA:CPU runs convolution gradients inside while-loop bodies ~30x slower than at top
        # level (measured: 65 s vs 2 s per DDPM++ step), so on CPU the steps are unrolled.
        losses_ = []
        for i in range(images.shape[0]):
            state, loss = one_step(state, images[i])
            losses_.append(loss)
        return state, jnp.stack(losses_)

    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )


def make_eval_step(loss_fn, base_key, state_sharding, batch_sharding):
    """Jitted `eval_step(state, images[B, ...]) -> loss` on the EMA params (as the original)."""

    def eval_step(state, images):
        key = jax.random.fold_in(jax.random.fold_in(base_key, state.step), 2**30)
        return loss_fn(key, state.ema_params, images)

    return jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding))


# --------------------------------------------------------------------------------------------
# Devices and data.
# --------------------------------------------------------------------------------------------


def make_mesh() -> jax.sharding.Mesh:
    """1-D `data` mesh over every device of every host (Auto axes)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def to_global(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Assembles each host's slice of the batch into one globally sharded array."""
    batch_axis = 1 if len(sharding.spec) > 1 else 0
    global_shape = list(batch.shape)
    global_shape[batch_axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, batch, tuple(global_shape))


def check_batch_size(batch_size: int) -> None:
    if batch_size % jax.device_count():
        raise ValueError(
            f"batch size {batch_size} must be divisible by the number of devices "
            f"({jax.device_count()}); set --config.training.batch_size / eval.batch_size"
        )


# --------------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------------


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    """One manager: keep the latest (preemption) checkpoint plus every `snapshot_freq`-th."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        keep_period=config.training.snapshot_freq,
        create=True,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=options,
        item_handlers=ocp.StandardCheckpointHandler(),
    )


def _state_fields(state) -> dict:
    """The pytree fields of a `flax.struct.dataclass` state (with `step`) as a dict."""
    return {
        f.name: getattr(state, f.name)
        for f in dataclasses.fields(state)
        if f.metadata.get("pytree_node", True)
    }


def save_checkpoint(manager: ocp.CheckpointManager, state) -> None:
    """Saves a TrainState, or any `flax.struct.dataclass` state with a `step` (e.g. GANState)."""
    step = int(state.step)
    if step in manager.all_steps():
        return
    item = _state_fields(state)
    manager.save(step, args=ocp.args.StandardSave(item), force=True)
    manager.wait_until_finished()


def restore_checkpoint(manager, abstract, step: int, tx=None):
    """Restores `step` into the structure of `abstract` (a TrainState or any state dataclass).

    A converted TrainState checkpoint without `opt_state` gets a fresh one.
    """
    # Restore replicated over this run's devices, whatever topology wrote the checkpoint.
    replicated = NamedSharding(make_mesh(), P())
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract
    )
    if not isinstance(abstract, TrainState):
        item = manager.restore(step, args=ocp.args.StandardRestore(_state_fields(abstract)))
        item["step"] = jnp.asarray(item["step"], jnp.int32)
        return type(abstract)(**item)
    meta = manager.item_metadata(step)
    keys = set(meta.keys()) if meta is not None else {"step", "params", "ema_params", "opt_state"}
    target = {"step": abstract.step, "params": abstract.params, "ema_params": abstract.ema_params}
    if "opt_state" in keys:
        target["opt_state"] = abstract.opt_state
    item = manager.restore(step, args=ocp.args.StandardRestore(target))
    opt_state = item.get("opt_state")
    if opt_state is None:
        if tx is None:
            opt_state = abstract.opt_state
        else:
            opt_state = tx.init(item["params"])
    return TrainState(
        step=jnp.asarray(item["step"], jnp.int32),
        params=item["params"],
        ema_params=item["ema_params"],
        opt_state=opt_state,
    )


def restore_latest_good(manager, abstract, tx=None, max_step=None):
    """The newest checkpoint that restores; a corrupt or truncated one is reported and skipped.

    Returns:
      `(state, step)` or `(None, None)` when no checkpoint restores.
    """
    for step in sorted(manager.all_steps(read=True), reverse=True):
        if max_step is not None and step > max_step:
            continue
        try:
            return restore_checkpoint(manager, abstract, step, tx), step
        except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
            logging.warning(
                "Checkpoint %s/%d could not be restored (%s: %s); trying the previous one.",
                manager.directory,
                step,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
    return None, None


def restore_ema_params(config, workdir: str, model, *, what: str = "", hint: str = "",
                       max_step=None, tx=None, abstract=None):  # fmt: skip
    """EMA params of the newest good checkpoint in `workdir/checkpoints` (at most `max_step`).

    `abstract` defaults to the score model's `TrainState` (`create_train_state`); pass another
    state's (with its `tx`) for e.g. a classifier. Raises FileNotFoundError naming the
    directory, `what` checkpoint is missing and `hint` (how to make one).

    Returns:
      `(ema_params, step)`.
    """
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    if abstract is None:
        tx = losses.get_optimizer(config)
        abstract = jax.eval_shape(lambda: create_train_state(config, model, tx, jax.random.key(0)))
    manager = checkpoint_manager(workdir, config)
    try:
        if max_step is not None and max_step not in manager.all_steps(read=True):
            raise FileNotFoundError(
                f"No checkpoint step {max_step} in {ckpt_dir}; "
                f"available steps: {sorted(manager.all_steps(read=True))}"
            )
        state, step = restore_latest_good(manager, abstract, tx, max_step=max_step)
    finally:
        manager.close()
    if state is None:
        what = f"{what} " if what else ""
        raise FileNotFoundError(f"No {what}checkpoint in {ckpt_dir}; {hint}")
    return state.ema_params, step


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


class _StopSignal:
    """Turns SIGTERM / SIGINT into a flag the loop checks (save, then exit cleanly)."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_config(config) -> None:
    n = config.training.n_jitted_steps
    for field in ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
        if getattr(config.training, field) % n:
            raise ValueError(
                f"config.training.{field}={getattr(config.training, field)} must be a multiple "
                f"of config.training.n_jitted_steps={n}"
            )
    check_batch_size(config.training.batch_size)
    check_batch_size(config.eval.batch_size)


def _check_finite(losses_host: np.ndarray, first_step: int) -> None:
    bad = np.flatnonzero(~np.isfinite(losses_host))
    if bad.size:
        raise FloatingPointError(
            f"Non-finite training loss {losses_host[bad[0]]} at step {first_step + int(bad[0]) + 1}; "
            "the last good checkpoint is kept. Lower optim.lr, check the data scaling "
            "(data.centered) or set a smaller optim.grad_clip, then resume."
        )


def train(config, workdir: str):
    """Runs training (the original `run_lib.train`); resumes from the last good checkpoint.

    A DCGAN config (`model.name == 'dcgan'`, the DDLS experiments) trains in `gan_lib.train`.
    """
    if config.model.name == "dcgan":
        import gan_lib

        return gan_lib.train(config, workdir)
    import datasets
    from models import utils as mutils

    _check_config(config)
    utils.quiet_library_logs()
    tf_workdir = os.path.abspath(workdir)
    os.makedirs(tf_workdir, exist_ok=True)
    utils.write_config(config, tf_workdir)
    sde, sampling_eps = get_sde(config)
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    base_key = jax.random.key(config.seed)
    mesh = make_mesh()
    state_sharding = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(None, "data"))

    init_key = jax.random.fold_in(base_key, -1 % 2**31)
    abstract = jax.eval_shape(lambda: create_train_state(config, model, tx, init_key))
    manager = checkpoint_manager(tf_workdir, config)
    state, restored = restore_latest_good(manager, abstract, tx)
    if state is None:
        state = jax.jit(lambda k: create_train_state(config, model, tx, k))(init_key)
        logging.info("Starting from scratch (%d parameters).", utils.count_params(state.params))
    else:
        logging.info("Resumed from checkpoint step %d.", restored)
    state = jax.device_put(state, state_sharding)
    initial_step = int(state.step)

    n_jitted = config.training.n_jitted_steps
    train_iter, eval_iter = _data_iterators(config, initial_step // n_jitted)
    scaler = datasets.get_data_scaler(config)
    train_step = make_train_step(
        get_loss_fn(config, sde, model, train=True),
        tx,
        config.model.ema_rate,
        base_key,
        state_sharding,
        batch_sharding,
    )
    eval_step = make_eval_step(
        get_loss_fn(config, sde, model, train=False),
        base_key,
        state_sharding,
        NamedSharding(mesh, P("data")),
    )
    writer = utils.MetricWriter(tf_workdir)
    sample_fn = (
        _snapshot_sampler(config, sde, model, sampling_eps)
        if (config.training.snapshot_sampling)
        else None
    )

    logging.info("Initial compilation, this may take a few minutes...")
    num_train_steps = config.training.n_iters
    pending = []  # (first_step, device losses) not yet checked for finiteness
    t_last, step_last = time.perf_counter(), initial_step
    bar = utils.progress_bar(num_train_steps, initial_step, "train")
    with _StopSignal() as stop:
        step = initial_step
        while step < num_train_steps:
            batch = next(train_iter)
            images = to_global(scaler(batch["image"]), batch_sharding)
            state, loss = train_step(state, images)
            pending.append((step, loss))
            step += n_jitted
            bar.update(n_jitted)
            if step % config.training.log_freq == 0 or step >= num_train_steps:
                losses_host = _flush(pending)
                now = time.perf_counter()
                rate = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                bar.set_postfix(loss=f"{losses_host[-1]:.4g}")
                writer.write(
                    step,
                    training_loss=float(losses_host[-1]),
                    steps_per_sec=rate,
                    images_per_sec=rate * config.training.batch_size,
                )
                logging.log_first_n(logging.INFO, "step %d compiled and ran.", 1, step)
            if step % config.training.eval_freq == 0:
                eval_batch = next(eval_iter)
                eval_images = to_global(scaler(eval_batch["image"]), NamedSharding(mesh, P("data")))
                writer.write(step, eval_loss=float(eval_step(state, eval_images)))
            save_now = (
                step % config.training.snapshot_freq_for_preemption == 0
                or step % config.training.snapshot_freq == 0
                or step >= num_train_steps
                or stop.received
            )
            if save_now:
                _flush(pending)  # never save a state that produced a non-finite loss
                save_checkpoint(manager, state)
                if sample_fn is not None and (
                    step % config.training.snapshot_freq == 0 or step >= num_train_steps
                ):
                    utils.save_sample_grid(
                        sample_fn(jax.random.fold_in(base_key, step), state.ema_params),
                        os.path.join(tf_workdir, "samples", f"iter_{step}"),
                    )
            if stop.received:
                logging.warning(
                    "Received %s: checkpoint saved at step %d, exiting.", stop.received, step
                )
                break
    _flush(pending)
    bar.close()
    manager.close()
    writer.close()
    return state


def _flush(pending: list) -> np.ndarray:
    """Fetches pending losses, raising on the first non-finite one."""
    out = []
    while pending:
        first, loss = pending.pop(0)
        host = np.asarray(jax.device_get(loss)).reshape(-1)
        _check_finite(host, first)
        out.append(host)
    return np.concatenate(out) if out else np.zeros(0)


def _data_iterators(config, start_step: int):
    """Training batches `[n_jitted_steps, B, H, W, C]` from `start_step` on; eval `[B, ...]`."""
    import datasets

    train_ds, _, _ = datasets.get_dataset(
        config,
        additional_dim=config.training.n_jitted_steps,
        uniform_dequantization=config.data.uniform_dequantization,
        start_step=start_step,
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
    import datasets
    import sampling

    shape = (
        config.training.batch_size,
        config.data.image_size,
        config.data.image_size,
        config.data.num_channels,
    )
    fn = sampling.get_sampling_fn(
        config, sde, model, shape, datasets.get_data_inverse_scaler(config), eps
    )
    return lambda key, params: np.asarray(fn(key, params)[0])


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------


def _wait_for_checkpoint(manager, step: int, config, workdir: str) -> bool:
    """Waits for checkpoint `step` while training can still write it (no end_ckpt hang).

    Returns False (after a warning) when the run is over and the step will never exist: the
    final step `n_iters` is already saved, or nothing changed for `eval.wait_timeout` seconds.
    """
    timeout = float(config.eval.get("wait_timeout", 3600.0))
    last_change = time.time()
    seen = None
    while True:
        steps = manager.all_steps(read=True)
        if step in steps:
            return True
        if steps and max(steps) >= config.training.n_iters:
            logging.warning("Checkpoint step %d does not exist and training is finished.", step)
            return False
        if steps != seen:
            seen, last_change = steps, time.time()
        if time.time() - last_change > timeout:
            logging.warning("Gave up waiting %.0fs for checkpoint step %d.", timeout, step)
            return False
        logging.info("Waiting for checkpoint step %d in %s ...", step, manager.directory)
        time.sleep(min(60.0, max(timeout / 10, 0.1)))


def _eval_loss(config, eval_step, state, mesh) -> float:
    import datasets

    _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
    scaler = datasets.get_data_scaler(config)
    sharding = NamedSharding(mesh, P("data"))
    values = [float(eval_step(state, to_global(scaler(b["image"]), sharding))) for b in eval_ds]
    return float(np.mean(values))


def _eval_bpd(config, state, sde, model, folder: str, ckpt: int, mesh) -> float:
    """Bits/dim over the (uniformly dequantised) bpd dataset, resumable per batch file."""
    import datasets
    import likelihood

    train_ds, test_ds, _ = datasets.get_dataset(
        config,
        uniform_dequantization=True,
        evaluation=True,
        num_epochs=1 if config.eval.bpd_dataset == "train" else config.eval.bpd_num_repeats,
    )
    ds = train_ds if config.eval.bpd_dataset == "train" else test_ds
    scaler = datasets.get_data_scaler(config)
    bpd_fn = likelihood.get_model_likelihood_fn(
        sde, model, datasets.get_data_inverse_scaler(config)
    )
    bpd_key = jax.random.fold_in(jax.random.key(config.seed + 1), ckpt)
    all_bpds = []
    for r, batch in enumerate(ds):
        if 0 <= config.eval.bpd_max_batches <= r:
            break
        path = os.path.join(folder, f"{config.eval.bpd_dataset}_ckpt_{ckpt}_bpd_{r}.npz")
        if os.path.exists(path):
            all_bpds.append(np.load(path)["bpd"])
            continue
        x = to_global(scaler(batch["image"]), NamedSharding(mesh, P("data")))
        bpd = np.asarray(bpd_fn(jax.random.fold_in(bpd_key, r), state.ema_params, x)[0])
        if utils.is_main_process():
            np.savez_compressed(path, bpd=bpd)
        all_bpds.append(bpd)
        logging.info("ckpt %d bpd round %d: running mean %.4f", ckpt, r, np.mean(all_bpds))
    return float(np.mean(np.concatenate(all_bpds))) if all_bpds else float("nan")


def _sample_rounds(config, state, sde, model, eps, folder: str, ckpt: int, mesh):
    """Draws `eval.num_samples` samples in rounds of `eval.batch_size`, one npz per round.

    Round r uses key `fold_in(sample_key, r)`: a killed evaluation resumes at the first
    missing round and reproduces exactly the samples an uninterrupted one would have drawn.
    Returns all samples as uint8 `[num_samples, H, W, C]`.
    """
    import datasets
    import sampling

    b = config.eval.batch_size
    shape = (b, config.data.image_size, config.data.image_size, config.data.num_channels)
    sampling_fn = sampling.get_sampling_fn(
        config,
        sde,
        model,
        shape,
        datasets.get_data_inverse_scaler(config),
        eps,
        sharding=NamedSharding(mesh, P("data")),
    )
    sample_key = jax.random.fold_in(jax.random.key(config.seed + 1), ckpt)
    num_rounds = -(-config.eval.num_samples // b)
    out = []
    for r in _progress(range(num_rounds), f"ckpt {ckpt} sampling"):
        path = os.path.join(folder, f"samples_{r}.npz")
        if os.path.exists(path):
            out.append(np.load(path)["samples"])
            continue
        x, nfe = sampling_fn(jax.random.fold_in(sample_key, r), state.ema_params)
        samples = utils.to_uint8(jax.device_get(x))
        if utils.is_main_process():
            tmp = path + ".tmp.npz"
            np.savez_compressed(tmp, samples=samples, nfe=np.asarray(nfe))
            os.replace(tmp, path)  # a killed run never leaves a half-written round
        out.append(samples)
    return np.concatenate(out)[: config.eval.num_samples]


def _progress(iterable, desc):
    if not utils.is_main_process():
        return iterable
    try:
        from tqdm import tqdm

        return tqdm(iterable, desc=desc)
    except ImportError:
        return iterable


def _sample_metrics(config, samples_uint8: np.ndarray, folder: str) -> dict:
    """FID / IS / KID with Inception (TF-GAN), and/or FD / KID in an offline feature space.

    Inception is used unless `eval.inception_path == 'none'`; the offline extractor when
    `eval.feature_extractor_path` is set. Features are cached per checkpoint folder.
    """
    import evaluation

    results = {}
    if config.eval.inception_path.lower() != "none":
        inceptionv3 = config.data.image_size >= 256
        model = evaluation.get_inception_model(inceptionv3, path=config.eval.inception_path)
        feats = evaluation.run_inception_distributed(samples_uint8, model, inceptionv3=inceptionv3)
        data_pools = evaluation.load_dataset_stats(config)
        results["fid"] = float(evaluation.compute_fid(data_pools, feats["pool_3"]))
        results["kid"] = float(evaluation.compute_kid(data_pools, feats["pool_3"]))
        results["inception_score"] = (
            -1.0 if inceptionv3 else float(evaluation.compute_inception_score(feats["logits"]))
        )
    if config.eval.get("feature_extractor_path", ""):
        extractor = evaluation.load_feature_extractor(config.eval.feature_extractor_path)
        data_images = _reference_images(config, len(samples_uint8))
        results.update(evaluation.compute_offline_metrics(extractor, data_images, samples_uint8))
    return results


def _reference_images(config, n: int) -> np.ndarray:
    """The first `n` training images as uint8 (the offline metrics' reference set)."""
    import datasets

    reference = config.copy_and_resolve_references()
    with reference.unlocked():
        reference.data.random_flip = False
        reference.eval.batch_size = min(config.eval.batch_size, n)
    train_ds, _, _ = datasets.get_dataset(reference, evaluation=True)
    out, total = [], 0
    for batch in train_ds:
        out.append(utils.to_uint8(batch["image"]))
        total += len(out[-1])
        if total >= n:
            break
    return np.concatenate(out)[:n]


def evaluate(config, workdir: str, eval_folder: str = "eval") -> list[dict]:
    """Evaluates checkpoints `eval.begin_ckpt..eval.end_ckpt` (ids in units of snapshot_freq).

    For each: eval loss on EMA params, bits/dim (`eval.enable_bpd`), samples and their metrics
    (`eval.enable_sampling`). Results go to `<workdir>/<eval_folder>/metrics.jsonl` (one line
    per checkpoint), `report_<k>.json` and a `summary.md` table. Everything is resumable.
    """
    from models import utils as mutils

    check_batch_size(config.eval.batch_size)
    utils.quiet_library_logs()
    workdir = os.path.abspath(workdir)
    eval_dir = os.path.join(workdir, eval_folder)
    os.makedirs(eval_dir, exist_ok=True)
    sde, sampling_eps = get_sde(config)
    model = mutils.get_model(config)
    tx = losses.get_optimizer(config)
    mesh = make_mesh()
    state_sharding = NamedSharding(mesh, P())
    base_key = jax.random.key(config.seed + 1)
    abstract = jax.eval_shape(lambda: create_train_state(config, model, tx, jax.random.key(0)))
    eval_step = make_eval_step(
        get_loss_fn(config, sde, model, train=False),
        base_key,
        state_sharding,
        NamedSharding(mesh, P("data")),
    )
    manager = checkpoint_manager(workdir, config)
    writer = utils.MetricWriter(eval_dir, tensorboard=False)
    reports = []
    for ckpt in range(config.eval.begin_ckpt, config.eval.end_ckpt + 1):
        step = ckpt * config.training.snapshot_freq
        report_path = os.path.join(eval_dir, f"report_{ckpt}.json")
        if os.path.exists(report_path):
            with open(report_path) as f:
                reports.append(json.load(f))
            continue
        if not _wait_for_checkpoint(manager, step, config, workdir):
            break
        state = jax.device_put(restore_checkpoint(manager, abstract, step, tx), state_sharding)
        folder = os.path.join(eval_dir, f"ckpt_{ckpt}")
        os.makedirs(folder, exist_ok=True)
        report = {"ckpt": ckpt, "step": step}
        if config.eval.enable_loss:
            report["eval_loss"] = _eval_loss(config, eval_step, state, mesh)
        if config.eval.enable_bpd:
            report["bpd"] = _eval_bpd(config, state, sde, model, folder, ckpt, mesh)
        if config.eval.enable_sampling:
            samples = _sample_rounds(config, state, sde, model, sampling_eps, folder, ckpt, mesh)
            utils.save_sample_grid(samples[:64] / 255.0, folder, "grid")
            report.update(_sample_metrics(config, samples, folder))
        writer.write(step, **{k: v for k, v in report.items() if k not in ("ckpt", "step")})
        if utils.is_main_process():
            with open(report_path, "w") as f:
                json.dump(report, f, indent=2)
        reports.append(report)
    _write_summary(reports, os.path.join(eval_dir, "summary.md"))
    manager.close()
    return reports


def _write_summary(reports: list[dict], path: str) -> None:
    if not reports or not utils.is_main_process():
        return
    keys = sorted({k for r in reports for k in r} - {"ckpt", "step"})
    lines = ["| ckpt | step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in reports:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append(f"| {r['ckpt']} | {r['step']} | " + " | ".join(cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def compute_stats(config, workdir: str) -> str:
    """`--mode stats`: Inception pool_3 activations of the whole training split (the FID
    reference of the original: no dequantisation, no flip, uint8 input, every image).

    Writes `config.eval.stats_path`, or the original's `assets/stats/<dataset>_stats.npz`
    (relative to the current directory), where `evaluate` looks for it.
    """
    import datasets
    import evaluation

    stats_config = config.copy_and_resolve_references()
    with stats_config.unlocked():
        stats_config.data.random_flip = False
        stats_config.data.uniform_dequantization = False
    train_ds, _, _ = datasets.get_dataset(stats_config, evaluation=True)
    inceptionv3 = config.data.image_size >= 256
    model = evaluation.get_inception_model(inceptionv3, path=config.eval.inception_path)
    pools = []
    for batch in _progress(train_ds, "stats"):
        feats = evaluation.run_inception_distributed(
            utils.to_uint8(batch["image"]), model, inceptionv3=inceptionv3
        )
        pools.append(feats["pool_3"])
    path = config.eval.stats_path
    if not path:
        filename = evaluation._default_stats_filename(config)
        if filename is None:
            raise ValueError(
                f"No default statistics file name for {config.data.dataset!r}: set "
                "--config.eval.stats_path=<file.npz>"
            )
        path = os.path.join(evaluation.STATS_DIR, filename)  # where evaluate() looks
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if utils.is_main_process():
        np.savez_compressed(path, pool_3=np.concatenate(pools))
    logging.info("Wrote %d pool_3 activations to %s", sum(len(p) for p in pools), path)
    return path

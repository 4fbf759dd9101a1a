"""GAN training for DDLS: a DCGAN with the non-saturating loss (`--mode train`, model.name='dcgan').

`main.py --mode train` sends DCGAN configs here. It shares the score models' runtime
(`training/`): Orbax checkpoints under
`workdir/checkpoints` (resume from the last good one; SIGTERM / SIGINT save and exit), a clear
error on a non-finite loss (the last good checkpoint is never overwritten), `metrics.jsonl` with
`d_loss`, `g_loss`, `steps_per_sec`, sample grids of a fixed latent batch in
`workdir/samples/iter_<step>/`, one jitted step over a 1-D `data` mesh (batch sharded, state
replicated) and per-step keys `fold_in(base_key, step)`.

The loss and step functions take any pair of flax modules `G(z, train)`, `D(x, train) -> [B]`,
so tests can run them with tiny MLPs.

References:
  Goodfellow et al. 2014, "Generative Adversarial Nets", arXiv:1406.2661, Sec. 3 (the
  non-saturating generator loss, "maximize log D(G(z))").
  Radford et al. 2015, arXiv:1511.06434, Sec. 4 (Adam, lr 2e-4, beta1 0.5).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import optax
from absl import logging
from jax import numpy as jnp

import datasets
import fileio
import utils
from models import dcgan
from training import checkpoints, devices, loop
from training.state import all_finite

# Number of images in the fixed-latent sample grid written at each snapshot.
GRID_SIZE = 64


@flax.struct.dataclass
class GANState:
    """Generator and discriminator params, BN statistics and Adam states; keys derive from step."""

    step: jax.Array
    g_params: Any
    g_batch_stats: Any
    d_params: Any
    d_batch_stats: Any
    g_opt_state: Any
    d_opt_state: Any


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """-log D(x) - log(1 - D(G(z))), with D = sigmoid(d) (Goodfellow et al. 2014, Eq. 1)."""
    # softplus(-l) = -log sigmoid(l) and softplus(l) = -log(1 - sigmoid(l)), both stable.
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, Sec. 3)."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def gan_optimizer(config) -> optax.GradientTransformation:
    """Adam(optim.lr, b1=optim.beta1), the DCGAN setting (lr 2e-4, beta1 0.5)."""
    return optax.adam(config.optim.lr, b1=config.optim.beta1)


def init_state(generator, discriminator, tx, key, image_shape, z_dim: int, g_tx=None) -> GANState:
    """Step 0 for modules `generator(z, train)` and `discriminator(x, train)`.

    `tx` is the optimizer of D, and of G unless `g_tx` is given.
    """
    g_key, d_key = jax.random.split(key)
    g_vars = generator.init(g_key, jnp.zeros((1, z_dim)), train=False)
    d_vars = discriminator.init(d_key, jnp.zeros((1, *image_shape)), train=False)
    return GANState(
        step=jnp.asarray(0, jnp.int32),
        g_params=g_vars["params"],
        g_batch_stats=g_vars.get("batch_stats", {}),
        d_params=d_vars["params"],
        d_batch_stats=d_vars.get("batch_stats", {}),
        g_opt_state=(g_tx or tx).init(g_vars["params"]),
        d_opt_state=tx.init(d_vars["params"]),
    )


def _apply_train(module, params, batch_stats, x):
    """Train-mode apply; returns `(output, new batch_stats)` ({} for modules without BN)."""
    out, updates = module.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return out, updates.get("batch_stats", {})


def make_gan_step(generator, discriminator, tx, z_dim: int, g_tx=None):
    """Pure `gan_step(state, x_real, base_key) -> (state, {'d_loss', 'g_loss', ...})`.

    One discriminator update on the current G, then one generator update against the updated
    D, with the same latents (as the DCGAN reference code). Latents use
    `fold_in(base_key, step)`. `tx` updates D, and G unless `g_tx` is given.
    """
    g_tx = g_tx or tx

    def gan_step(state: GANState, x_real: jax.Array, base_key):
        batch = x_real.shape[0]
        z = jax.random.normal(jax.random.fold_in(base_key, state.step), (batch, z_dim))
        # Departure from the DCGAN code (separate D(real), D(fake) calls): D sees real and fake
        # as one batch, so its BN statistics in training match the running averages that the
        # eval-mode D of DDLS uses.
        x_fake, _ = _apply_train(generator, state.g_params, state.g_batch_stats, z)
        x_fake = jax.lax.stop_gradient(x_fake)

        # 1. Discriminator step.
        def d_objective(d_params):
            both = jnp.concatenate([x_real, x_fake])
            logits, d_stats = _apply_train(discriminator, d_params, state.d_batch_stats, both)
            return discriminator_loss(logits[:batch], logits[batch:]), (d_stats, logits)

        (d_loss, (d_stats, logits)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
            state.d_params
        )
        d_updates, d_opt_state = tx.update(d_grads, state.d_opt_state, state.d_params)
        d_params = optax.apply_updates(state.d_params, d_updates)

        # 2. Generator step against the updated D (its BN statistics from this pass are dropped).
        def g_objective(g_params):
            fake, g_stats = _apply_train(generator, g_params, state.g_batch_stats, z)
            both = jnp.concatenate([x_real, fake])
            fake_logits = _apply_train(discriminator, d_params, d_stats, both)[0][batch:]
            return generator_loss(fake_logits), g_stats

        (g_loss, g_stats), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.g_params)
        g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
        new = GANState(
            step=state.step + 1,
            g_params=optax.apply_updates(state.g_params, g_updates),
            g_batch_stats=g_stats,
            d_params=d_params,
            d_batch_stats=d_stats,
            g_opt_state=g_opt_state,
            d_opt_state=d_opt_state,
        )
        metrics = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(logits[:batch])),
            "d_fake": jnp.mean(jax.nn.sigmoid(logits[batch:])),
        }
        return new, metrics

    return gan_step


def generate(generator, state: GANState, z: jax.Array) -> jax.Array:
    """G(z) in eval mode (running BN statistics), images in [-1, 1]."""
    return generator.apply(
        {"params": state.g_params, "batch_stats": state.g_batch_stats}, z, train=False
    )


def build(config):
    """`(generator, discriminator, tx, abstract_state)` for `config` (model.name='dcgan')."""
    generator, discriminator = dcgan.get_gan(config)
    tx = gan_optimizer(config)
    shape = datasets.image_shape(config)
    abstract = jax.eval_shape(
        lambda: init_state(
            generator, discriminator, tx, jax.random.key(0), shape, config.model.z_dim
        )
    )
    return generator, discriminator, tx, abstract


def restore_gan(config, workdir: str) -> GANState:
    """The latest good checkpoint of `workdir`, replicated over the mesh.

    Raises:
      FileNotFoundError: no checkpoint under `workdir/checkpoints` restores.
    """
    _, _, _, abstract = build(config)
    manager = checkpoints.checkpoint_manager(workdir, config.training.snapshot_freq)
    state, step = checkpoints.restore_latest_good(manager, abstract, move_aside=False)
    manager.close()
    if state is None:
        raise FileNotFoundError(
            f"No restorable GAN checkpoint in {fileio.join(workdir, 'checkpoints')}; train one "
            "with `python main.py --config <configs/ddls/...> --workdir W --mode train`."
        )
    logging.info("Restored GAN checkpoint step %d from %s.", step, workdir)
    return state


def _save_grid(generator, state, z_fixed, inverse_scaler, workdir: str, step: int) -> None:
    images = devices.gather(inverse_scaler(generate(generator, state, z_fixed)))
    utils.save_sample_grid(images, fileio.join(workdir, "samples", f"iter_{step}"))


def _finite_step(gan_step):
    """`gan_step` with a `finite` metric: both losses and every new parameter are finite."""

    def step(state, x_real, base_key):
        new, metrics = gan_step(state, x_real, base_key)
        finite = all_finite((metrics["d_loss"], metrics["g_loss"], new.g_params, new.d_params))
        return new, {**metrics, "finite": finite}

    return step


def train(config, workdir: str) -> GANState:
    """Trains the GAN of `config` in `workdir`, resuming from the last good checkpoint."""
    t = config.training
    schedule = loop.Schedule.from_config(t)
    devices.check_batch_size(t.batch_size, "training.batch_size")
    utils.quiet_library_logs()
    workdir = fileio.makedirs(workdir)
    utils.write_config(config, workdir)
    generator, discriminator, tx, abstract = build(config)
    base_key = jax.random.key(config.seed)
    mesh = devices.make_mesh()
    state_sharding, batch_sharding = devices.replicated(mesh), devices.batch_sharding(mesh)

    manager = checkpoints.checkpoint_manager(workdir, t.snapshot_freq)

    def init():
        shape = (config.data.image_size,) * 2 + (config.data.num_channels,)
        init_key = jax.random.fold_in(base_key, -1 % 2**31)
        state = jax.jit(
            lambda k: init_state(generator, discriminator, tx, k, shape, config.model.z_dim)
        )(init_key)
        n_g, n_d = utils.count_params(state.g_params), utils.count_params(state.d_params)
        logging.info("Starting from scratch (G %d, D %d parameters).", n_g, n_d)
        return state

    state = checkpoints.restore_or_init(manager, abstract, init)
    state = jax.device_put(state, state_sharding)
    initial_step = int(state.step)

    train_ds, _, _ = datasets.get_dataset(
        config, uniform_dequantization=config.data.uniform_dequantization, start_step=initial_step
    )
    scaler = datasets.get_data_scaler(config)
    batches = (devices.to_global(scaler(b["image"]), batch_sharding) for b in train_ds)
    gan_step = jax.jit(
        _finite_step(make_gan_step(generator, discriminator, tx, config.model.z_dim)),
        in_shardings=(state_sharding, batch_sharding, None),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )
    z_fixed = jax.random.normal(
        jax.random.fold_in(base_key, 2**30), (GRID_SIZE, config.model.z_dim)
    )
    inverse_scaler = datasets.get_data_inverse_scaler(config)

    def save_grid(state, step):
        _save_grid(generator, state, z_fixed, inverse_scaler, workdir, step)

    writer = utils.MetricWriter(workdir)
    state = loop.run(
        state,
        lambda s, x: gan_step(s, x, base_key),
        batches,
        schedule,
        first_step=initial_step,
        manager=manager,
        writer=writer,
        on_snapshot=save_grid,
        nonfinite_hint="Lower optim.lr or check the data scaling (data.centered=True), then resume.",
        desc="gan",
    )
    manager.close()
    writer.close()
    return state

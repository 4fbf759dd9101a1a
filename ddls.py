"""Discriminator Driven Latent Sampling (DDLS): Langevin dynamics in a GAN's latent space.

A GAN generator G with prior p0(z) = N(0, I) and a discriminator logit d(x) define the latent
energy-based model

    p_t(z) ∝ p0(z) exp(d(G(z))),   E(z) = -log p0(z) - d(G(z)) = ||z||^2 / 2 - d(G(z)) + const,

(Che et al. 2020, Sec. 3; equation numbers not yet checked against arXiv v3). Sampling it
with Langevin dynamics

    z <- z - (eps / 2) grad E(z) + sqrt(eps) n,   n ~ N(0, I),

(Che et al. 2020, Sec. 3), then mapping z through G, corrects the generator towards the data
distribution when D is near-optimal. The step size eps is decayed by `decay` every
`decay_every` steps.

Pure math (`energy`, `get_energy_grad_fn`, `step_sizes`, `langevin_update`, `get_ddls_sampler`)
takes a `logit_fn(z) -> [B]` (= d(G(z)), eval-mode BN so that it is per-example) and runs on
device with `lax.scan` (on CPU a host loop over one jitted step; see `get_ddls_sampler`). `run_ddls` is the `--mode ddls` experiment: restore the GAN, run the chain
on `ddls.num_samples` latents and score the images at every recorded step (step 0 = the plain GAN).

Workdir layout (`<workdir>/<eval_folder>/`, default `ddls/`):
  fd_vs_steps.csv     step, step_size, metrics..., mean_energy, mean_logit per recorded step
  fd_vs_steps.png     the first metric against Langevin steps
  grid_step_<k>.png   the same 64 latents at every recorded step k
  summary.json        config.ddls, GAN step, rows of the CSV

References:
  Che, Zhang, Sohl-Dickstein, Larochelle, Paull, Cao, Bengio 2020, "Your GAN is Secretly an
  Energy-based Model and You Should use Discriminator Driven Latent Sampling", arXiv:2003.06060.
  Welling & Teh 2011, "Bayesian Learning via Stochastic Gradient Langevin Dynamics" (update rule).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax import Array
from jax import numpy as jnp

# Number of chains shown in the sample grids.
GRID_SIZE = 64

# --------------------------------------------------------------------------------------------
# Pure math.
# --------------------------------------------------------------------------------------------


def energy(z: Array, logit_fn: Callable[[Array], Array]) -> Array:
    """Latent energy `E(z) = ||z||^2 / 2 - d(G(z))` per example (Che et al. 2020, Sec. 3).

    Args:
      z: latents `[B, ...]`.
      logit_fn: `z -> d(G(z))` of shape `[B]`; must be per-example (no batch coupling).

    Returns:
      `[B]` energies, up to the constant `(dim / 2) log(2 pi)` of -log p0.
    """
    prior = 0.5 * jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
    return prior - logit_fn(z)


def get_energy_grad_fn(logit_fn: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """`grad_fn(z) -> grad E(z)` of the same shape as z.

    The gradient of the summed energy is the per-example gradient because the examples do
    not interact (`logit_fn` evaluated with frozen BN statistics).
    """
    return jax.grad(lambda z: jnp.sum(energy(z, logit_fn)))


def step_sizes(step_size: float, n_steps: int, decay: float = 1.0, decay_every: int = 0):
    """The step size of each Langevin step: `step_size * decay ** (i // decay_every)`.

    Args:
      step_size: eps of the first step.
      n_steps: number of steps.
      decay: factor applied every `decay_every` steps (1.0 = constant).
      decay_every: steps between decays; 0 means never.

    Returns:
      float32 NumPy array `[n_steps]`.
    """
    if step_size <= 0 or n_steps < 0 or decay <= 0 or decay_every < 0:
        raise ValueError(
            f"Need step_size > 0, n_steps >= 0, decay > 0, decay_every >= 0; got "
            f"step_size={step_size}, n_steps={n_steps}, decay={decay}, decay_every={decay_every}."
        )
    i = np.arange(n_steps)
    power = i // decay_every if decay_every else np.zeros_like(i)
    return (step_size * decay ** power.astype(np.float64)).astype(np.float32)


def langevin_update(noise: Array, z: Array, eps: Array, grad_fn) -> Array:
    """One Langevin step `z - (eps / 2) grad E(z) + sqrt(eps) n` (Che et al. 2020, Sec. 3)."""
    return z - 0.5 * eps * grad_fn(z) + jnp.sqrt(eps) * noise


def _chain_noise(keys: Array, i: Array, shape) -> Array:
    """Noise of step i for every chain: `normal(fold_in(key_b, i))`, so chain b's path does not
    depend on the batch it runs in."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape))(keys)


def get_ddls_sampler(
    logit_fn: Callable[[Array], Array],
    *,
    step_size: float,
    n_steps: int,
    decay: float = 1.0,
    decay_every: int = 0,
    record_steps: Sequence[int] = (0,),
    host_loop: bool | None = None,
):
    """A DDLS chain `sampler(key, z0) -> (z_final, z_records, eps_used)`.

    Args:
      logit_fn: `z -> d(G(z))` `[B]`, per-example.
      step_size, n_steps, decay, decay_every: the schedule of `step_sizes`.
      record_steps: steps k in [0, n_steps] (k updates done) at which z is recorded.
      host_loop: step from a host loop over one jitted update instead of `lax.scan`. None =
        on CPU only: XLA:CPU runs convolution gradients inside loop bodies several times slower
        than at top level (bench/ddls_langevin.py measured 3.7x for the CIFAR-10 DCGAN; see
        also run_lib.make_train_step). Both paths give the same chain.

    Returns:
      `sampler(key, z0)`: `key` is one typed key or `[B]` per-chain keys (chain b's noise at
      step i is `normal(fold_in(key_b, i))`); `z0` is `[B, ...]`. It returns the final z, the
      records `[len(record_steps), B, ...]` in sorted step order, and `eps_used` `[n_steps]`,
      the step size each update actually used.
    """
    records = sorted(set(int(k) for k in record_steps))
    if not records or records[0] < 0 or records[-1] > n_steps:
        raise ValueError(f"record_steps must lie in [0, n_steps={n_steps}]; got {record_steps}.")
    eps_table = jnp.asarray(step_sizes(step_size, n_steps, decay, decay_every))
    grad_fn = get_energy_grad_fn(logit_fn)
    if host_loop is None:
        host_loop = jax.default_backend() == "cpu"

    def one_step(keys, z, i):
        eps = eps_table[i]
        return langevin_update(_chain_noise(keys, i, z.shape[1:]), z, eps, grad_fn), eps

    def run(keys, z, start: int, stop: int):
        """Steps start..stop-1; returns (z, eps used)."""
        if not host_loop:
            return jax.lax.scan(lambda z, i: one_step(keys, z, i), z, jnp.arange(start, stop))
        used = []
        for i in range(start, stop):
            z, eps = jitted_step(keys, z, jnp.asarray(i, jnp.int32))
            used.append(eps)
        return z, jnp.stack(used)

    jitted_step = jax.jit(one_step)

    def sampler(key, z0):
        keys = jax.random.split(key, z0.shape[0]) if key.ndim == 0 else key
        z, out, used = z0, [], []
        # Run between consecutive record points; the chain is the same for any record_steps.
        for start, stop in zip([0, *records], [*records, n_steps]):
            if stop > start:
                z, eps = run(keys, z, start, stop)
                used.append(eps)
            if len(out) < len(records) and stop == records[len(out)]:
                out.append(z)
        eps_used = jnp.concatenate(used) if used else jnp.zeros((0,), jnp.float32)
        return z, jnp.stack(out), eps_used

    return sampler if host_loop else jax.jit(sampler)


# --------------------------------------------------------------------------------------------
# The `--mode ddls` experiment.
# --------------------------------------------------------------------------------------------


def get_logit_fn(generator, discriminator, state) -> Callable[[Array], Array]:
    """`z -> d(G(z))` with both networks in eval mode (running BN statistics)."""

    def logit_fn(z):
        x = generator.apply(
            {"params": state.g_params, "batch_stats": state.g_batch_stats}, z, train=False
        )
        return discriminator.apply(
            {"params": state.d_params, "batch_stats": state.d_batch_stats}, x, train=False
        )

    return logit_fn


def initial_latents(key, start: int, stop: int, z_dim: int) -> Array:
    """Latents `start..stop-1` from per-sample keys `fold_in(key, index)`."""
    idx = jnp.arange(start, stop)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (z_dim,)))(idx)


def _run_chains(config, generator, state, sampler, logit_fn, inverse_scaler):
    """Runs every batch of chains; returns uint8 images, energies and logits per record."""
    import gan_lib
    import utils

    c = config.ddls
    z_key, noise_key = jax.random.split(jax.random.key(config.seed + 2))
    gen = jax.jit(lambda z: inverse_scaler(gan_lib.generate(generator, state, z)))
    stats = jax.jit(lambda z: (energy(z, logit_fn), logit_fn(z)))
    images, energies, logits = [], [], []
    bar = utils.progress_bar(c.num_samples, 0, "ddls chains")
    for start in range(0, c.num_samples, c.batch_size):
        stop = min(start + c.batch_size, c.num_samples)
        z0 = initial_latents(z_key, start, stop, config.model.z_dim)
        keys = jax.vmap(lambda i: jax.random.fold_in(noise_key, i))(jnp.arange(start, stop))
        _, records, eps_used = sampler(keys, z0)
        images.append(np.stack([utils.to_uint8(jax.device_get(gen(z))) for z in records]))
        e, d = zip(*(jax.device_get(stats(z)) for z in records))
        energies.append(np.stack(e))
        logits.append(np.stack(d))
        bar.update(stop - start)
    bar.close()
    cat = lambda xs: np.concatenate(xs, axis=1)
    return cat(images), cat(energies), cat(logits), np.asarray(eps_used)


def _write_outputs(folder, rows, images, record_steps) -> None:
    """fd_vs_steps.csv, the metric plot and the grids along the chain."""
    import utils

    keys = list(rows[0])
    with open(os.path.join(folder, "fd_vs_steps.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    for k, step in enumerate(record_steps):
        utils.save_sample_grid(images[k, :GRID_SIZE] / 255.0, folder, f"grid_step_{step}")
    _plot(folder, rows)


def _plot(folder: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    metrics = [k for k in rows[0] if k not in ("step", "step_size")]
    # Distances first (fid, fd_*), then the other metrics, energy and logit last.
    metrics.sort(key=lambda k: (not k.startswith(("fid", "fd_")), k.startswith("mean_")))
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        ax.plot(steps, [r[name] for r in rows], "o-")
        ax.set_xlabel("Langevin steps")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "fd_vs_steps.png"), dpi=100)
    plt.close(fig)


def run_ddls(config, workdir: str, eval_folder: str = "ddls") -> list[dict]:
    """Restores the trained GAN, runs DDLS and scores the samples at every recorded step.

    Returns:
      One dict per recorded step: step, step_size (of the next update), the metrics of
      `run_lib._sample_metrics`, mean_energy and mean_logit (mean d(G(z))).

    Raises:
      FileNotFoundError: `workdir` holds no restorable GAN checkpoint.
    """
    import datasets
    import gan_lib
    import run_lib
    import utils

    utils.quiet_library_logs()
    workdir = os.path.abspath(workdir)
    folder = os.path.join(workdir, eval_folder)
    os.makedirs(folder, exist_ok=True)
    generator, discriminator, _, _ = gan_lib.build(config)
    state = gan_lib.restore_gan(config, workdir)
    logit_fn = get_logit_fn(generator, discriminator, state)
    c = config.ddls
    record_steps = sorted(set(int(k) for k in c.record_steps))
    sampler = get_ddls_sampler(
        logit_fn,
        step_size=c.step_size,
        n_steps=c.n_steps,
        decay=c.decay,
        decay_every=c.decay_every,
        record_steps=record_steps,
    )
    logging.info("DDLS: %d chains of %d steps (records at %s).", c.num_samples, c.n_steps,
                 record_steps)  # fmt: skip
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    images, energies, logits, eps_used = _run_chains(
        config, generator, state, sampler, logit_fn, inverse_scaler
    )
    # The step size of the update that follows each record (float64, for the CSV).
    eps_at = lambda k: c.step_size * c.decay ** (k // c.decay_every if c.decay_every else 0)
    rows = []
    for k, step in enumerate(record_steps):
        metrics = run_lib._sample_metrics(config, images[k], folder)
        row = {"step": step, "step_size": eps_at(step), **metrics}
        row.update(mean_energy=float(energies[k].mean()), mean_logit=float(logits[k].mean()))
        logging.info("DDLS step %d: %s", step, row)
        rows.append(row)
    if utils.is_main_process():
        _write_outputs(folder, rows, images, record_steps)
        summary = {"gan_step": int(state.step), "ddls": c.to_dict(), "rows": rows}
        summary["eps_used_first_last"] = (
            [float(eps_used[0]), float(eps_used[-1])] if len(eps_used) else []
        )
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=list)
    return rows

"""The `--mode ddls` experiment: DDLS on a trained DCGAN (Che et al. 2020, arXiv:2003.06060).

Restores the GAN (`experiments/gan.py`), runs the latent Langevin chains of `samplers/ddls.py` on
`ddls.num_samples` latents and scores the images at every recorded step (step 0 = the plain GAN).

Workdir layout (`<workdir>/<eval_folder>/`, default `ddls/`):
  fd_vs_steps.csv     step, step_size, metrics..., mean_energy, mean_logit per recorded step
  fd_vs_steps.png     the first metric against Langevin steps
  grid_step_<k>.png   the same 64 latents at every recorded step k
  summary.json        config.ddls, GAN step, rows of the CSV

The workdir may be local or gs:// (`fileio`). Multi-host: the chains of each batch are sharded
over every device of every host (chain b has the same latent and noise keys whatever the
topology), the records are gathered to every process, and process 0 writes.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax import Array
from jax import numpy as jnp

import datasets
import fileio
import utils
from experiments import gan
from samplers import ddls
from training import devices, sample_eval

# Number of chains shown in the sample grids.
GRID_SIZE = 64


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


def _sharded(fn, sharding):
    """`fn()` (arrays with a leading chain axis) computed straight into `sharding`."""
    return jax.jit(fn, out_shardings=sharding)()


def _run_chains(config, generator, state, sampler, logit_fn, inverse_scaler):
    """Runs every batch of chains; returns uint8 images, energies and logits per record."""
    c = config.ddls
    mesh = devices.make_mesh()
    z_key, noise_key = jax.random.split(jax.random.key(config.seed + 2))
    gen = jax.jit(lambda z: inverse_scaler(gan.generate(generator, state, z)))
    stats = jax.jit(lambda z: (ddls.energy(z, logit_fn), logit_fn(z)))
    images, energies, logits = [], [], []
    bar = utils.progress_bar(c.num_samples, 0, "ddls chains")
    for start in range(0, c.num_samples, c.batch_size):
        stop = min(start + c.batch_size, c.num_samples)
        # Chains sharded over every device when the batch divides evenly, else replicated.
        even = (stop - start) % jax.device_count() == 0
        sharding = devices.batch_sharding(mesh) if even else devices.replicated(mesh)
        z0 = _sharded(
            functools.partial(initial_latents, z_key, start, stop, config.model.z_dim), sharding
        )
        chain_keys = lambda a=start, b=stop: jax.vmap(lambda i: jax.random.fold_in(noise_key, i))(
            jnp.arange(a, b)
        )
        keys = _sharded(chain_keys, sharding)
        _, records, eps_used = sampler(keys, z0)
        # Indexed, not iterated: a multi-host array cannot be iterated on the host.
        records = [records[k] for k in range(records.shape[0])]
        images.append(np.stack([utils.to_uint8(devices.gather(gen(z))) for z in records]))
        e, d = zip(*(devices.gather(stats(z)) for z in records))
        energies.append(np.stack(e))
        logits.append(np.stack(d))
        bar.update(stop - start)
    bar.close()
    cat = lambda xs: np.concatenate(xs, axis=1)
    return cat(images), cat(energies), cat(logits), np.asarray(eps_used)


def _write_outputs(folder, rows, images, record_steps) -> None:
    """fd_vs_steps.csv, the metric plot and the grids along the chain."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text_atomic(fileio.join(folder, "fd_vs_steps.csv"), text.getvalue())
    for k, step in enumerate(record_steps):
        utils.save_sample_grid(images[k, :GRID_SIZE] / 255.0, folder, f"grid_step_{step}")
    _plot(folder, rows)


def _plot(folder: str, rows: list[dict]) -> None:
    metrics = [k for k in rows[0] if k not in ("step", "step_size")]
    # Distances first (fid, fd_*), then the other metrics, energy and logit last.
    metrics.sort(key=lambda k: (not k.startswith(("fid", "fd_")), k.startswith("mean_")))
    steps = [r["step"] for r in rows]
    fig = utils.new_figure((3.2 * len(metrics), 3))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        ax.plot(steps, [r[name] for r in rows], "o-")
        ax.set_xlabel("Langevin steps")
        ax.set_title(name)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    fileio.write_bytes(fileio.join(folder, "fd_vs_steps.png"), png.getvalue())


def run_ddls(config, workdir: str, eval_folder: str = "ddls") -> list[dict]:
    """Restores the trained GAN, runs DDLS and scores the samples at every recorded step.

    Returns:
      One dict per recorded step: step, step_size (of the next update), the metrics of
      `training.sample_eval.sample_metrics`, mean_energy and mean_logit (mean d(G(z))).

    Raises:
      FileNotFoundError: `workdir` holds no restorable GAN checkpoint.
    """
    utils.quiet_library_logs()
    workdir = fileio.absolute(workdir)
    folder = fileio.makedirs(fileio.join(workdir, eval_folder))
    generator, discriminator, _, _ = gan.build(config)
    state = gan.restore_gan(config, workdir)
    if jax.process_count() > 1:
        # The chains' jitted functions close over the GAN's weights, and a jit may not close
        # over arrays that span other hosts' devices: every host takes its local replica as
        # NumPy constants (single-host runs keep the device arrays).
        state = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), state)
    logit_fn = get_logit_fn(generator, discriminator, state)
    c = config.ddls
    record_steps = sorted(set(int(k) for k in c.record_steps))
    sampler = ddls.get_ddls_sampler(
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
        metrics = sample_eval.sample_metrics(config, images[k])
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
        fileio.write_text_atomic(
            fileio.join(folder, "summary.json"), json.dumps(summary, indent=2, default=list)
        )
    return rows

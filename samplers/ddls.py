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

Pure math: `energy`, `get_energy_grad_fn`, `step_sizes`, `latent_langevin_update` and
`get_ddls_sampler` take a `logit_fn(z) -> [B]` (= d(G(z)), eval-mode BN so that it is
per-example) and run on device with `lax.scan` (or from a host loop over one jitted step; see
`get_ddls_sampler`). The `--mode ddls` experiment is `experiments/ddls.py`.

References:
  Che, Zhang, Sohl-Dickstein, Larochelle, Paull, Cao, Bengio 2020, "Your GAN is Secretly an
  Energy-based Model and You Should use Discriminator Driven Latent Sampling", arXiv:2003.06060.
  Welling & Teh 2011, "Bayesian Learning via Stochastic Gradient Langevin Dynamics" (update rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax import Array
from jax import numpy as jnp

import utils

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


def latent_langevin_update(noise: Array, z: Array, eps: Array, grad_fn) -> Array:
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
        `not utils.device_loops()` (`$SCORE_SDE_LOOPS`; by default the scan: the DCGAN's
        convolution gradients are loop-safe on XLA:CPU, models/conv.py). Both paths give the
        same chain.

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
    host_loop = not utils.device_loops(None if host_loop is None else not host_loop)

    def one_step(keys, z, i):
        eps = eps_table[i]
        return latent_langevin_update(_chain_noise(keys, i, z.shape[1:]), z, eps, grad_fn), eps

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

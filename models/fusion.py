"""`boundary(x)`: the identity, which XLA:CPU must keep in memory, with its cotangent.

XLA fuses a cheap elementwise producer into every consumer that can take it, and duplicates it
when it has several (it refuses only when some consumer cannot fuse it). The residual stream of
the score networks, `x_{k+1} = (x_k + h_k) / sqrt(2)`, has only fusible consumers: GroupNorm's
statistics and normalisation, the next residual sum, and in the backward pass the cotangent
sums and the transposes that feed the convolutions' `dw`. So XLA:CPU never stores it: each
consumer recomputes the stream from the block outputs, and its cotangent likewise. In the
DDPM++ cont. gradient (batch 8) that made fusions of 100+ operands, each recomputing 10-20
blocks' sums, the same chain in up to 8 fusions: 1.1 s of 5.0 s of thread time went to
elementwise fusions.

`boundary` passes `x` through a `lax.cond`, which XLA never fuses, so its operand and result are
materialised once and every consumer reads them. Both branches are the identity (`-(-x)` in
the one never taken: exact for every float, NaN payloads included; identical branches would be
merged away), and the predicate is a constant `True` behind an optimisation barrier: no data
dependency, so nothing to communicate when `x` is sharded. JAX's transpose of the `cond` is the
same construction, so the cotangent is materialised too. Values and gradients equal those
without the boundary up to float rounding (the sums are grouped differently).

Only on the CPU backend (`enabled=None`): XLA:GPU and TPU fuse differently, and a conditional
on GPU reads its predicate on the host.

Two more things XLA:CPU keeps for the backward pass that it need not, both also CPU-only by
default:
  * `Dropout`: its mask as one byte per element (through `boundary`), where XLA kept the
    threefry bits, two u32 words per element, and recompared them.
  * `remat`: a residual block whose only saved values are its inputs, its convolution / matrix
    product outputs and its dropout masks; GroupNorm, the activations and the convolutions'
    inputs are recomputed. XLA:CPU otherwise stores per `act(GN(x)) -> conv` the centred input,
    the activation and the transposed conv input: three copies of a map that is itself already
    stored. (Its scheduler still runs most of the recomputation at the end of the forward pass;
    the transposed conv inputs wait for the cotangent, `conv._grad_rhs`.)
In the DDPM++ cont. train step at batch 8 the two take XLA's temp buffer from 984 to 693 MiB
(NCSN++ cont.: 864 after the first -> 715 MiB), at the same step time.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
from flax import linen as nn
from jax import Array, lax
from jax import numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from models import prng

DROPOUT_MASK = "dropout_mask"

# What a `remat` block keeps for its backward pass: convolution / matrix product outputs (costly
# to recompute) and dropout masks (random bits); all else is recomputed from the block's inputs.
REMAT_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_saveable,
    jax.checkpoint_policies.save_only_these_names(DROPOUT_MASK),
)

_FORCED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fusion_forced", default=None)


@contextlib.contextmanager
def forced(enabled: bool) -> Iterator[None]:
    """Within the block, `enabled=None` means `enabled` (for A/B measurements and tests).

    It acts when a function is traced: a jitted function traced before keeps its cached trace.
    """
    token = _FORCED.set(bool(enabled))
    try:
        yield
    finally:
        _FORCED.reset(token)


def default_enabled(enabled: bool | None = None) -> bool:
    """`enabled` when given; else (what `enabled=None` means) the `forced` value, else True on
    the CPU backend."""
    if enabled is not None:
        return enabled
    forced_value = _FORCED.get()
    return jax.default_backend() == "cpu" if forced_value is None else forced_value


def _negate_twice(x: Array) -> Array:
    if x.dtype == jnp.bool_:
        return jnp.logical_not(jnp.logical_not(x))
    return jnp.negative(jnp.negative(x))


def boundary(x: Array, enabled: bool | None = None) -> Array:
    """`x`, materialised by XLA (values and cotangents) when `enabled` (None: on CPU)."""
    if not default_enabled(enabled):
        return x
    keep = lax.optimization_barrier(jnp.bool_(True))
    return lax.cond(keep, lambda v: v, _negate_twice, x)


def remat(method: Callable, module: nn.Module, *args, static_argnums=(), enabled=None):
    """`method(module, *args)` under `nn.checkpoint` with `REMAT_POLICY` (when `enabled`;
    None: `default_enabled()`). `method` is the module's own body (submodules made inline keep
    their names, so params and checkpoints do not change); `static_argnums` count `module` as 0.
    Values equal those without it; gradients up to float rounding."""
    if not default_enabled(enabled):
        return method(module, *args)
    wrapped = nn.checkpoint(method, policy=REMAT_POLICY, static_argnums=static_argnums)
    return wrapped(module, *args)


class Dropout(nn.Dropout):
    """`flax.linen.Dropout` (same fields, rng stream and mask), its keep-mask through `boundary`
    and named `DROPOUT_MASK` (what `remat` keeps).

    XLA:CPU otherwise keeps the mask's random bits for the backward pass and recomputes the
    comparison there: two u32 words per element (threefry's halves) live from the forward to the
    backward, 8 bytes where the mask needs 1. Named `Dropout`, so its auto-name (`Dropout_0`)
    and so the `make_rng` fold-in are flax's: the same key gives the same mask. The mask is
    `prng.bernoulli`'s (when enabled): `jax.random.bernoulli`'s bits with the hash in one kernel.
    """

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = prng.bernoulli(rng, keep_prob, shape, enabled=default_enabled())
        mask = boundary(checkpoint_name(mask, DROPOUT_MASK))
        mask = jnp.broadcast_to(mask, inputs.shape)
        return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))

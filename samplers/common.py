"""Helpers shared by every sampler (`sampling.py`, `samplers/*`, `controllable_generation.py`).

The bottom of the sampler layering: imports JAX only.
"""

from __future__ import annotations

import jax
from jax import Array


def identity(x: Array) -> Array:
    """The default `inverse_scaler`: returns `x` unchanged."""
    return x


def check_shape(shape) -> tuple[int, ...]:
    """`shape` as a tuple of ints; raises a ValueError unless it is `(batch, ...)` with >= 2 dims."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (batch, ...) with at least 2 dims, got {shape}")
    return shape


def constrain(x: Array, sharding) -> Array:
    """Places the batch on `sharding` inside jit (works for Auto and Explicit mesh axes)."""
    return x if sharding is None else jax.device_put(x, sharding)

"""`bernoulli(key, p, shape)`: `jax.random.bernoulli`'s mask, bit for bit, as one elementwise kernel.

On the CPU backend JAX lowers its threefry hash as a rolled loop (`fori_loop` over its five
key injections, to keep compile times down): each of the five iterations reads and writes both
32-bit halves of every element, so a dropout mask of 8x32x32x128 elements costs five passes
over 8 MiB plus the counters', the bits and the comparison: 3.9 ms against 1.0 ms for the same
mask written out as one unrolled expression, which XLA fuses into a single loop that keeps the
state in registers (standalone, 2 cores). In the DDPM++ cont. train step the 22 dropout masks
are ~16M elements.

`bernoulli` computes what `jax.random.bernoulli(key, p, shape)` does with JAX's defaults
(threefry2x32 keys, partitionable bits, float32 `p`, `mode="low"`) with the hash unrolled and
the comparison in integers:
  * bits = `hi ^ lo` of threefry2x32(key, (0, i)) for the row-major index `i` of each element
    (`jax_threefry_partitionable`, the default since JAX 0.5);
  * JAX's uniform is `u = m * 2**-23` with `m = bits >> 9` (the float `1 + m * 2**-23` minus 1,
    exact), so `u < p` iff `m < ceil(p * 2**23)` (`p` float32: `p * 2**23` is exact).
Anything else (another key implementation, the original threefry bit layout, a non-float32 `p`,
2**32 elements or more, `enabled=False`, a non-CPU backend by default) calls
`jax.random.bernoulli` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax import Array, lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: Array, d: int) -> Array:
    return lax.shift_left(x, np.uint32(d)) | lax.shift_right_logical(x, np.uint32(32 - d))


def threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 hash (20 rounds) of the counter pairs `(x0, x1)` under key `(k0, k1)`,
    unrolled; the same words as JAX's `threefry2x32_p`. All uint32."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotate_left(x1, r)
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _threefry_key_words(key: Array) -> tuple[Array, Array] | None:
    """The two uint32 words of a threefry2x32 key (typed or raw), or None for other keys."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        data = jax.random.key_data(key)
    else:
        if key.shape != (2,) or key.dtype != np.uint32:
            return None
        if jax.config.jax_default_prng_impl != "threefry2x32":
            return None
        data = key
    return data[0], data[1]


def random_bits32(key: Array, shape: Sequence[int]) -> Array | None:
    """`jax.random.bits(key, shape)` (uint32) with the hash unrolled, or None where this does
    not reproduce JAX's bits (see the module docstring)."""
    words = _threefry_key_words(key)
    size = int(np.prod(shape, dtype=np.int64))
    if words is None or not jax.config.jax_threefry_partitionable or size >= 2**32:
        return None
    index = lax.iota(np.uint32, size).reshape(tuple(shape))
    hi, lo = threefry2x32(words[0], words[1], lax.full_like(index, 0), index)
    return hi ^ lo


def bernoulli(key: Array, p: float, shape: Sequence[int], enabled: bool | None = None) -> Array:
    """`jax.random.bernoulli(key, p, shape)`, the same booleans, computed in one fused kernel
    when `enabled` (None: on the CPU backend) and `p` is a finite Python or NumPy scalar."""
    shape = tuple(int(d) for d in shape)
    if enabled is None:
        enabled = jax.default_backend() == "cpu"
    scalar = isinstance(p, (float, np.floating)) and bool(np.isfinite(p))  # int p: JAX raises
    p_dtype = jax.dtypes.canonicalize_dtype(np.float64)  # JAX's dtype for a Python float
    if enabled and scalar and p_dtype == np.float32:
        p32 = np.float32(p)
        bits = random_bits32(key, shape)
        if bits is not None:
            # m = bits >> 9 lies in [0, 2**23): a threshold of 0 keeps nothing, 2**23 everything.
            threshold = np.clip(np.ceil(np.float64(p32) * 2.0**23), 0, 2**23)
            return lax.shift_right_logical(bits, np.uint32(9)) < np.uint32(threshold)
    return jax.random.bernoulli(key, p, shape)

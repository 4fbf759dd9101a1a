"""models/fusion.py: `boundary` is the identity (values, JVP, VJP), and on XLA:CPU it stops the
residual stream's fusions from growing with depth (what made the DDPM++ gradient slow)."""

import re

import jax
import numpy as np
import pytest
from jax import numpy as jnp

from models import fusion

SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3.4e38, 1.5], np.float32)


def _bits(a):
    return np.asarray(a).view(np.uint32)


@pytest.mark.parametrize("enabled", [True, False, None])
def test_boundary_is_the_identity_bit_for_bit(enabled):
    x = np.concatenate([SPECIALS, np.random.default_rng(0).normal(size=56).astype(np.float32)])
    x = x.reshape(2, 4, 8)
    y = jax.jit(lambda v: fusion.boundary(v, enabled))(x)
    np.testing.assert_array_equal(_bits(y), _bits(x))
    t = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    primal, tangent = jax.jvp(lambda v: fusion.boundary(v, enabled), (x,), (t,))
    np.testing.assert_array_equal(_bits(primal), _bits(x))
    np.testing.assert_array_equal(_bits(tangent), _bits(t))
    _, vjp = jax.vjp(lambda v: fusion.boundary(v, enabled), x)
    np.testing.assert_array_equal(_bits(vjp(t)[0]), _bits(t))
    # Under vmap the cond becomes a select of two identities: still the identity.
    np.testing.assert_array_equal(
        _bits(jax.vmap(lambda v: fusion.boundary(v, enabled))(x)), _bits(x)
    )


def _residual_net(ws, x, enabled):
    """A residual stream as in the score networks: per-sample normalisation, SiLU, a matrix
    product (unfusible), `(x + h) / sqrt(2)`."""
    for w in ws:
        m = jnp.mean(x, axis=(1, 2), keepdims=True)
        v = jnp.mean((x - m) ** 2, axis=(1, 2), keepdims=True)
        h = jnp.einsum("nhwc,cd->nhwd", jax.nn.silu((x - m) * jax.lax.rsqrt(v + 1e-6)), w)
        x = fusion.boundary((x + h) / np.sqrt(2.0), enabled)
    return jnp.sum(x**2)


def _largest_fusion(hlo: str) -> int:
    """The most parameters of any fused computation in compiled HLO text."""
    bodies = re.finditer(r"\n%?([\w.\-]+) \([^\n]*\) -> [^\n]*\{\n(.*?)\n\}", hlo, re.S)
    return max(b.group(2).count(" parameter(") for b in bodies if "fus" in b.group(1))


def test_boundary_keeps_the_residual_stream_in_memory_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("the boundary is only applied on the CPU backend")
    ws = [jax.random.normal(jax.random.key(i), (16, 16)) / 4 for i in range(8)]
    x = jax.random.normal(jax.random.key(9), (2, 8, 8, 16))
    hlo, grads = {}, {}
    for enabled in (False, True):
        g = jax.jit(jax.grad(lambda ws, x, e=enabled: _residual_net(ws, x, e), argnums=(0, 1)))
        hlo[enabled] = g.lower(ws, x).compile().as_text()
        grads[enabled] = g(ws, x)
    # Without boundaries XLA:CPU fuses the whole stream's sums into each consumer (74
    # parameters in one fusion with this jaxlib); with them every fusion stays one block deep.
    assert hlo[True].count(" conditional(") == 2 * len(ws)  # forward and cotangent
    assert hlo[False].count(" conditional(") == 0
    assert _largest_fusion(hlo[True]) <= 16 < 40 <= _largest_fusion(hlo[False])
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_boundary_defaults_to_the_backend():
    x = jnp.ones((3,))
    hlo = jax.jit(fusion.boundary).lower(x).compile().as_text()
    assert (" conditional(" in hlo) == (jax.default_backend() == "cpu")

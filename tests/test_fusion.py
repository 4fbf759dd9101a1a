"""models/fusion.py: `boundary` is the identity (values, JVP, VJP), and on XLA:CPU it stops the
residual stream's fusions from growing with depth (what made the DDPM++ gradient slow);
`Dropout` is flax's, mask for mask; `remat` blocks keep their params and values and shrink
the gradient's temp buffer."""

import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax import numpy as jnp

from models import fusion, layers, layerspp

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
    assert fusion.default_enabled() == (jax.default_backend() == "cpu")
    for forced in (True, False):
        with fusion.forced(forced):
            assert fusion.default_enabled() is forced
            hlo = jax.jit(lambda v: fusion.boundary(v)).lower(x).compile().as_text()
            assert (" conditional(" in hlo) is forced
    assert fusion.default_enabled() == (jax.default_backend() == "cpu")


def test_boundary_of_a_bool_mask_is_the_identity():
    m = jax.random.bernoulli(jax.random.key(0), 0.5, (4, 6))
    out = jax.jit(lambda v: fusion.boundary(v, True))(m)
    assert out.dtype == jnp.bool_
    np.testing.assert_array_equal(out, m)


class _Drop(nn.Module):
    cls: type
    rate: float
    broadcast_dims: tuple = ()

    @nn.compact
    def __call__(self, x, deterministic):
        return self.cls(self.rate, broadcast_dims=self.broadcast_dims)(x, deterministic)


@pytest.mark.parametrize("rate, dims", [(0.1, ()), (0.5, (1, 2)), (0.0, ()), (1.0, ())])
@pytest.mark.parametrize("deterministic", [False, True])
def test_dropout_is_flax_dropout_mask_for_mask(rate, dims, deterministic):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16)) + 3.0
    out, grad = {}, {}
    for cls in (nn.Dropout, fusion.Dropout):
        m = _Drop(cls, rate, dims)

        def f(x, m=m):
            return m.apply({}, x, deterministic, rngs={"dropout": jax.random.key(5)})

        out[cls] = jax.jit(f)(x)
        grad[cls] = jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x) ** 2)))(x)
    np.testing.assert_array_equal(out[fusion.Dropout], out[nn.Dropout])
    np.testing.assert_array_equal(grad[fusion.Dropout], grad[nn.Dropout])
    if 0.0 < rate < 1.0 and not deterministic:  # a real mask: some zeros, some kept
        assert 0 < int(jnp.sum(out[nn.Dropout] == 0)) < x.size


def _blocks(block):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            x = nn.Conv(32, (3, 3))(x)
            temb = jnp.ones((x.shape[0], 16))
            for _ in range(3):
                x = block(act=nn.swish, dropout=0.1)(x, temb, train)
            return x

    return Net()


@pytest.mark.parametrize(
    "block", [layerspp.ResnetBlockBigGANpp, layerspp.ResnetBlockDDPMpp, layers.ResnetBlockDDPM]
)
def test_remat_blocks_keep_params_values_and_gradients(block):
    net = _blocks(block)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    params, out, grads = {}, {}, {}
    for on in (False, True):
        with fusion.forced(on):
            params[on] = net.init({"params": jax.random.key(1)}, x, train=False)["params"]

            def loss(p):
                y = net.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(2)})
                return jnp.sum(y**2), y

            (_, out[on]), grads[on] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params[on])
    assert jax.tree.structure(params[True]) == jax.tree.structure(params[False])
    for a, b in zip(jax.tree.leaves(params[True]), jax.tree.leaves(params[False])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(out[True], out[False], rtol=1e-6, atol=1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads[False]))
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


def test_dropout_and_remat_shrink_the_gradients_temp_buffer_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("measured on XLA:CPU")
    net = _blocks(layerspp.ResnetBlockBigGANpp)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    params = net.init({"params": jax.random.key(1)}, x, train=False)["params"]

    def loss(p, k):
        return jnp.sum(net.apply({"params": p}, x, train=True, rngs={"dropout": k}) ** 2)

    temp, hlo = {}, {}
    for on in (False, True):
        with fusion.forced(on):
            compiled = jax.jit(jax.grad(loss)).lower(params, jax.random.key(2)).compile()
            temp[on] = compiled.memory_analysis().temp_size_in_bytes
            hlo[on] = compiled.as_text()
    # The masks go through conditionals as bytes; XLA's temp buffer shrinks by over 20 %
    # (this jaxlib: 17.0 -> 11.4 MiB for these three 32-channel blocks at batch 4).
    assert re.search(r"pred\[4,32,32,32\][^\n]* conditional\(", hlo[True])
    assert not re.search(r" conditional\(", hlo[False])
    assert temp[True] < 0.8 * temp[False], temp

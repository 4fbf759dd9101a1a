"""models/conv.py: canonical-layout convolution gradients equal JAX's, and stay canonical in loops."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs.testing import ddpm_tiny, ddpmpp_tiny, ncsnpp_tiny, ncsnv2_tiny
from models import conv, dcgan, feature_extractor, fusion, up_or_down_sampling
from models import utils as mutils
from models import wideresnet_noise_conditional as wrn

CASES = {
    # name: (x shape, w shape, strides, padding, lhs_dilation, rhs_dilation, groups)
    "3x3 same": ((2, 8, 8, 4), (3, 3, 4, 5), (1, 1), "SAME", None, None, 1),
    "3x3 stride2 same": ((2, 8, 8, 4), (3, 3, 4, 5), (2, 2), "SAME", None, None, 1),
    "3x3 stride2 valid odd": ((2, 9, 7, 3), (3, 3, 3, 2), (2, 2), "VALID", None, None, 1),
    "1x1": ((2, 6, 6, 4), (1, 1, 4, 3), (1, 1), "SAME", None, None, 1),
    "1x1 stride2": ((2, 6, 6, 4), (1, 1, 4, 3), (2, 2), "SAME", None, None, 1),
    "3x3 dilated": ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME", None, (2, 2), 1),
    "3x3 explicit": ((1, 7, 8, 2), (3, 3, 2, 3), (1, 1), ((2, 0), (1, 3)), None, None, 1),
    "transposed 4x4": ((2, 5, 5, 3), (4, 4, 3, 2), (1, 1), ((2, 3), (2, 3)), (2, 2), None, 1),
    "fir up conv": ((1, 4, 4, 3), (3, 3, 3, 2), (1, 1), ((2, 2), (2, 2)), (2, 2), None, 1),
    "4x4 stride2": ((2, 8, 8, 3), (4, 4, 3, 6), (2, 2), "SAME", None, None, 1),
    # The kernel outgrows the output map (XLA would swap the operands of dx).
    "4x4 stride2 to 2x2": ((2, 4, 4, 3), (4, 4, 3, 6), (2, 2), ((1, 1), (1, 1)), None, None, 1),
    "depthwise": ((2, 8, 8, 4), (4, 4, 1, 4), (1, 1), ((2, 1), (2, 1)), None, None, 4),
    "depthwise stride2": ((2, 8, 8, 4), (4, 4, 1, 4), (2, 2), "VALID", None, None, 4),
    "grouped": ((2, 6, 6, 4), (3, 3, 2, 6), (1, 1), "SAME", None, None, 2),
}


def _args(case, seed=0):
    xs, ws, *_ = CASES[case]
    kx, kw = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, xs), jax.random.normal(kw, ws)


def _fn(impl, case):
    _, _, strides, padding, lhs_d, rhs_d, groups = CASES[case]

    def f(x, w):
        y = impl(x, w, strides, padding, lhs_d, rhs_d, conv.NHWC, feature_group_count=groups)
        return jnp.sum(jnp.sin(y))

    return f


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradients_match_lax(case):
    x, w = _args(case)
    ref = _fn(lax.conv_general_dilated, case)
    new = _fn(conv.conv_general_dilated, case)
    if case == "1x1":
        # A matrix product (test_pointwise_conv_is_a_matrix_product): float rounding only.
        np.testing.assert_allclose(jax.jit(new)(x, w), jax.jit(ref)(x, w), rtol=1e-6)
    else:
        np.testing.assert_array_equal(jax.jit(new)(x, w), jax.jit(ref)(x, w))
    for got, want in zip(
        jax.jit(jax.grad(new, (0, 1)))(x, w), jax.jit(jax.grad(ref, (0, 1)))(x, w)
    ):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_pointwise_conv_is_a_matrix_product():
    """1x1, stride 1: forward, `dx` and `dw` are dots (XLA:CPU's 1x1 convolution kernel runs at
    half the matrix product's speed); strided or dilated-input 1x1 kernels stay convolutions."""
    x, w = _args("1x1")
    text = jax.jit(jax.value_and_grad(_fn(conv.conv_general_dilated, "1x1"), (0, 1))).lower(x, w)
    hlo = text.compile().as_text()
    assert "convolution(" not in hlo and hlo.count(" dot(") >= 3
    strided = jax.jit(_fn(conv.conv_general_dilated, "1x1 stride2")).lower(x, w).compile()
    assert "convolution(" in strided.as_text()


def test_other_layouts_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))
    w = jax.random.normal(jax.random.key(1), (4, 3, 3, 3))
    dn = ("NCHW", "OIHW", "NCHW")
    got = conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    np.testing.assert_array_equal(
        got, lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    )


def _conv_dim_labels(compiled_text: str) -> set[str]:
    return set(re.findall(r"convolution\(.*dim_labels=(\S+?),", compiled_text))


def test_gradients_in_a_loop_body_are_canonical():
    """The point of the module: in a `fori_loop` body every convolution of the gradient is in
    the NHWC/HWIO layout that XLA:CPU's fast kernels take (lax's are not, jax-ml/jax#12868)."""
    x, w = _args("3x3 stride2 same")

    def looped(impl):
        grad = jax.grad(_fn(impl, "3x3 same"), (0, 1))

        def body(_, c):
            gx, gw = grad(*c)
            return c[0] - 1e-3 * gx, c[1] - 1e-3 * gw

        return jax.jit(lambda x, w: lax.fori_loop(0, 2, body, (x, w)))

    x, w = _args("3x3 same")
    new_labels = _conv_dim_labels(looped(conv.conv_general_dilated).lower(x, w).compile().as_text())
    assert new_labels == {"b01f_01io->b01f"}, new_labels
    ref = looped(lax.conv_general_dilated)
    if jax.default_backend() == "cpu":  # documents the XLA:CPU behaviour the module works around
        assert _conv_dim_labels(ref.lower(x, w).compile().as_text()) != {"b01f_01io->b01f"}
    got, want = looped(conv.conv_general_dilated)(x, w), ref(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_transpose_padding_matches_lax():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    w = jax.random.normal(jax.random.key(1), (4, 4, 3, 2))
    for padding in ("SAME", "VALID"):
        want = lax.conv_transpose(x, w, (2, 2), padding, dimension_numbers=conv.NHWC)
        pads = [conv.conv_transpose_padding(4, 2, padding)] * 2
        got = conv.conv_general_dilated(x, w, (1, 1), pads, (2, 2), None, conv.NHWC)
        np.testing.assert_array_equal(got, want)


def test_forward_mode_and_second_order():
    """`jax.jvp` (the likelihood's divergence) and grad-of-grad work as with `lax`."""
    x, w = _args("3x3 stride2 same")
    e = jax.random.normal(jax.random.key(5), x.shape)
    outs = []
    for impl in (lax.conv_general_dilated, conv.conv_general_dilated):
        f = _fn(impl, "3x3 stride2 same")
        jvp = jax.jvp(lambda x, f=f: f(x, w), (x,), (e,))[1]
        hvp = jax.grad(lambda x, f=f: jnp.vdot(jax.grad(f)(x, w), e))(x)
        outs.append((jvp, hvp))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-5)
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kernel, strides, padding, use_bias, transpose_kernel",
    [
        (4, 2, "SAME", True, False),  # the flax layout
        (3, 2, "VALID", True, True),
        (4, 2, ((2, 2), (2, 2)), False, True),  # the torch layouts: ConvTranspose2d(4, 2, 1)
        (1, 1, ((0, 0), (0, 0)), False, True),  # the torch_1x1 head
    ],
)
def test_dcgan_conv_transpose_is_flax_conv_transpose(
    kernel, strides, padding, use_bias, transpose_kernel
):
    """Same params (names, shapes, init), outputs and gradients as `nn.ConvTranspose`."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    kw = dict(kernel_size=(kernel, kernel), strides=(strides, strides), padding=padding,
              use_bias=use_bias, transpose_kernel=transpose_kernel,
              kernel_init=nn.initializers.normal(0.02))  # fmt: skip
    ours, flax_ = dcgan.ConvTranspose(5, **kw), nn.ConvTranspose(5, **kw)
    p_ours, p_flax = ours.init(jax.random.key(1), x), flax_.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, p_ours) == jax.tree.map(jnp.shape, p_flax)
    np.testing.assert_array_equal(p_ours["params"]["kernel"], p_flax["params"]["kernel"])
    y_ours, y_flax = ours.apply(p_ours, x), flax_.apply(p_ours, x)
    if kernel == 1:  # a matrix product: float rounding
        np.testing.assert_allclose(y_ours, y_flax, rtol=1e-6, atol=1e-8)
    else:
        np.testing.assert_array_equal(y_ours, y_flax)
    grads = [
        jax.grad(lambda p, x, m=m: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1))(p_ours, x)
        for m in (ours, flax_)
    ]
    # Bit for bit but the 1x1 kernel's (dot products, float rounding).
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", dcgan.LAYOUTS)
def test_dcgan_latent_gradient_in_a_loop_body_is_canonical(layout):
    """DDLS's chain: the gradient of D(G(z)) in z inside a `fori_loop`, for every DCGAN layout
    (the torch ones included: converted pretrained networks run there too)."""
    g = dcgan.Generator(image_size=32, num_channels=3, ngf=4, layout=layout)
    d = dcgan.Discriminator(image_size=32, ndf=4, layout=layout)
    z = jax.random.normal(jax.random.key(0), (2, 8))
    vg = g.init(jax.random.key(1), z, train=False)
    vd = d.init(jax.random.key(2), g.apply(vg, z, train=False), train=False)
    energy = lambda z: jnp.sum(d.apply(vd, g.apply(vg, z, train=False), train=False))  # noqa: E731
    body = lambda _, z: z - 1e-3 * jax.grad(energy)(z)  # noqa: E731
    looped = jax.jit(lambda z: lax.fori_loop(0, 2, body, z))
    assert _conv_dim_labels(looped.lower(z).compile().as_text()) == {"b01f_01io->b01f"}


def _sub_jaxprs(jaxpr) -> list:
    """`jaxpr` and every jaxpr nested in its equations' params."""
    found = [jaxpr]
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _sub_jaxprs(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _sub_jaxprs(sub)
    return found


def _conv_eqns(jaxpr) -> list:
    """Every convolution of `jaxpr` and its sub-jaxprs."""
    subs = _sub_jaxprs(jaxpr)
    return [eqn for sub in subs for eqn in sub.eqns if eqn.primitive.name == "conv_general_dilated"]


def _conv_dimension_numbers(jaxpr) -> list:
    """The dimension numbers of every convolution in `jaxpr` and its sub-jaxprs."""
    return [eqn.params["dimension_numbers"] for eqn in _conv_eqns(jaxpr)]


def _score_net(module):
    config = module.get_config()
    model = mutils.get_model(config)
    size, channels = config.data.image_size, config.data.num_channels
    x, labels = jnp.ones((1, size, size, channels)), jnp.ones((1,), jnp.int32)
    return lambda key: model.init(key, x, labels, train=False), lambda v: model.apply(
        v, x, labels, train=False
    )


def _flax_net(model, *args):
    return lambda key: model.init(key, *args), lambda v: model.apply(v, *args)


NETWORKS = {
    "ddpm": lambda: _score_net(ddpm_tiny),
    "ddpm++": lambda: _score_net(ddpmpp_tiny),
    "ncsn++": lambda: _score_net(ncsnpp_tiny),
    "ncsnv2": lambda: _score_net(ncsnv2_tiny),
    "wideresnet": lambda: _flax_net(
        wrn.WideResnet(depth=10, widen_factor=1, num_classes=2, temb_dim=32),
        jnp.ones((1, 8, 8, 3)),
        jnp.ones((1,)),
    ),  # fmt: skip
    "feature extractor": lambda: _flax_net(
        feature_extractor.FeatureExtractor(num_classes=2), jnp.ones((1, 8, 8, 1))
    ),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_convolution_has_canonical_gradients(name):
    """Every convolution of every network goes through `conv.conv_general_dilated`: the
    gradient's convolutions (traced, not compiled) are all in the canonical NHWC/HWIO layout,
    where a plain `nn.Conv` would add lax's permuted ones."""
    init, apply = NETWORKS[name]()
    variables = jax.eval_shape(init, jax.random.key(0))
    variables = jax.tree.map(lambda a: jnp.full(a.shape, 0.01, a.dtype), variables)

    def loss(params):
        out = apply({**variables, "params": params})
        return sum(jnp.sum(jnp.asarray(o, jnp.float32)) for o in jax.tree.leaves(out))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(variables["params"]).jaxpr
    numbers = _conv_dimension_numbers(jaxpr)
    assert numbers, "no convolution traced"
    canonical = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), conv.NHWC)
    assert all(n == canonical for n in numbers), set(numbers)


def _conv_stack_grad(layers=12, ch=64):
    ws = [jax.random.normal(jax.random.key(i), (3, 3, ch, ch)) * 0.05 for i in range(layers)]
    x = jax.random.normal(jax.random.key(99), (2, 8, 8, ch))

    def loss(ws, x):
        for w in ws:
            x = jnp.tanh(
                conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC)
            )
        return jnp.sum(x**2)

    compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled(ws, x), ws[0].nbytes


def test_kernel_transposes_wait_for_the_cotangent(monkeypatch):
    """`dx`'s flipped kernels are made after the backward pass reaches their layer: without
    `_after`, XLA:CPU makes them first and holds them (12 layers: 2.3 kernels more temp buffer,
    24 layers: 5); the gradients are the same bits either way."""
    tied_temp, tied_grads, kernel_bytes = _conv_stack_grad()
    monkeypatch.setattr(conv, "_after", lambda a, g: a)
    free_temp, free_grads, _ = _conv_stack_grad()
    assert free_temp - tied_temp > 2 * kernel_bytes, (free_temp, tied_temp, kernel_bytes)
    for a, b in zip(tied_grads, free_grads):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _upsample(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


UPSAMPLED = {
    # name: (x shape, w shape, strides, padding, rhs_dilation); the first two are phased.
    "3x3 same": ((2, 5, 6, 4), (3, 3, 4, 3), (1, 1), "SAME", None),
    "3x3 explicit (1, 1)": ((1, 3, 4, 2), (3, 3, 2, 5), (1, 1), ((1, 1), (1, 1)), None),
    "3x3 valid": ((2, 4, 4, 3), (3, 3, 3, 2), (1, 1), "VALID", None),
    "3x3 stride2": ((2, 4, 4, 3), (3, 3, 3, 2), (2, 2), "SAME", None),
    "3x3 dilated": ((1, 5, 5, 2), (3, 3, 2, 2), (1, 1), "SAME", (2, 2)),
    "2x2 same": ((2, 3, 3, 4), (2, 2, 4, 3), (1, 1), "SAME", None),
}


@pytest.mark.parametrize("case", sorted(UPSAMPLED))
def test_upsampled_conv_is_upsample_then_conv(case):
    """Values, both gradients and the jvp equal nearest-2x-upsampling then convolving; the 3x3
    'SAME' case convolves only at the input's resolution (four 2x2 kernels), the others upsample."""
    xs, ws, strides, padding, rhs_d = UPSAMPLED[case]
    kx, kw, ke = jax.random.split(jax.random.key(3), 3)
    x, w, e = jax.random.normal(kx, xs), jax.random.normal(kw, ws), jax.random.normal(ke, xs)

    def fn(impl):
        def f(x, w):
            y = impl(x, w, strides, padding, None, rhs_d, conv.NHWC)
            return jnp.sum(jnp.sin(y))

        return f

    new = fn(up_or_down_sampling.upsampled_conv_general_dilated)
    ref = fn(lambda x, w, *a: lax.conv_general_dilated(_upsample(x), w, *a))
    np.testing.assert_allclose(jax.jit(new)(x, w), jax.jit(ref)(x, w), rtol=1e-5)
    for got, want in zip(jax.grad(new, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    jvps = [jax.jvp(lambda x, f=f: f(x, w), (x,), (e,))[1] for f in (new, ref)]
    np.testing.assert_allclose(jvps[0], jvps[1], rtol=1e-4)
    y = up_or_down_sampling.upsampled_conv_general_dilated(
        x, w, strides, padding, None, rhs_d, conv.NHWC
    )
    jaxpr = jax.make_jaxpr(jax.grad(new, (0, 1)))(x, w).jaxpr
    lhs_sizes = {tuple(eqn.invars[0].aval.shape[1:3]) for eqn in _conv_eqns(jaxpr)}
    assert y.shape == lax.conv_general_dilated(_upsample(x), w, strides, padding, None, rhs_d,
                                               conv.NHWC).shape  # fmt: skip
    phased = case in ("3x3 same", "3x3 explicit (1, 1)")
    assert ((2 * xs[1], 2 * xs[2]) in lhs_sizes) != phased, lhs_sizes


def test_upsampled_conv_needs_nhwc():
    x, w = jnp.ones((1, 2, 4, 4)), jnp.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="NHWC"):
        up_or_down_sampling.upsampled_conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"))  # fmt: skip


def test_dw_input_is_stored_before_its_transpose():
    """On CPU `dw`'s input passes through `fusion.boundary` (a `cond`) before its batch <->
    channel transpose, so XLA cannot fuse its producer (here SiLU) into the transposing copy;
    the gradients equal those without it (to float rounding: the producer becomes a kernel of
    its own, which may round its exponential differently)."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

    def loss(w, x):
        y = conv.conv_general_dilated(
            jax.nn.silu(x), w, (1, 1), "SAME", dimension_numbers=conv.NHWC
        )
        return jnp.sum(y**2)

    def dw_transpose_operands(enabled):
        with fusion.forced(enabled):
            jaxpr = jax.make_jaxpr(jax.grad(loss))(w, x).jaxpr
        producers = []
        for sub in _sub_jaxprs(jaxpr):
            made_by = {v: eqn.primitive.name for eqn in sub.eqns for v in eqn.outvars}
            producers += [
                made_by.get(eqn.invars[0])
                for eqn in sub.eqns
                if eqn.primitive.name == "transpose" and eqn.params["permutation"] == (3, 1, 2, 0)
            ]
        return producers

    assert dw_transpose_operands(True) == ["cond"]
    assert dw_transpose_operands(False) != ["cond"]
    grads = []
    for enabled in (True, False):
        with fusion.forced(enabled):
            grads.append(jax.jit(jax.grad(loss))(w, x))
    np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(grads[1]), rtol=1e-6, atol=1e-6)

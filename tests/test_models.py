"""Tests for the NCSN++ / DDPM++ / DDPM networks, their layers and `models.utils`.

Full-size models are only traced (`jax.eval_shape`, nothing allocated); forward passes use the
tiny configs (16x16, batch 2). Golden model outputs and parameter snapshots come from the
original score_sde code (see tests/testdata/README.md); layer functions are checked against
NumPy references written here.
"""

import json
import pathlib
import zlib

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from jax import numpy as jnp

import sde_lib
from configs.subvp import cifar10_ddpmpp_continuous as subvp_ddpmpp_continuous
from configs.testing import _shrink, ddpm_tiny, ddpmpp_tiny, ncsnpp_tiny, ncsnv2_tiny
from configs.ve import (
    church_ncsnpp_continuous,
    cifar10_ddpm,
    cifar10_ncsnpp,
    cifar10_ncsnpp_continuous,
    cifar10_ncsnpp_deep_continuous,
)
from configs.vp import cifar10_ddpmpp, cifar10_ddpmpp_deep_continuous
from configs.vp.ddpm import cifar10 as vp_ddpm_cifar10
from models import layers, layerspp, up_or_down_sampling
from models import utils as mutils

TESTDATA = pathlib.Path(__file__).parent / "testdata"
GOLDEN_FILE = TESTDATA / "models_golden.npz"
SNAPSHOT_FILE = TESTDATA / "models_tiny_params.json"


# ---------------------------------------------------------------------------------------------
# Model configs shared with tests/testdata/make_models_golden.py.
# ---------------------------------------------------------------------------------------------


def _ncsnpp_skip_cat():
    """NCSN++ with output_skip / input_skip pyramids and 'cat' combine (the 256-px layout)."""
    config = ncsnpp_tiny.get_config()
    config.model.progressive = "output_skip"
    config.model.progressive_input = "input_skip"
    config.model.progressive_combine = "cat"
    return config


def _ncsnpp_residual_out():
    """NCSN++ with a 'residual' output pyramid (fused FIR upsampling conv) and init_scale 0.3."""
    config = ncsnpp_tiny.get_config()
    config.model.progressive = "residual"
    config.model.init_scale = 0.3
    return config


# name -> config; every model's forward pass is compared with the original's.
TINY_CONFIGS = {
    "ncsnpp_tiny": ncsnpp_tiny.get_config,
    "ddpmpp_tiny": ddpmpp_tiny.get_config,
    "ddpm_tiny": ddpm_tiny.get_config,
    "ncsnpp_skip_cat": _ncsnpp_skip_cat,
    "ncsnpp_residual_out": _ncsnpp_residual_out,
    # Positional NCSN++ with scale_by_sigma (VE, discrete): sigmas[labels].
    "ncsnpp_positional_ve": lambda: _shrink.shrink(cifar10_ncsnpp.get_config()),
    # DDPM trained with the SMLD loss (VE, scale_by_sigma, uncentered data).
    "ddpm_ve": lambda: _shrink.shrink(cifar10_ddpm.get_config(), nf=32),
}
SNAPSHOT_MODELS = ("ncsnpp_tiny", "ddpmpp_tiny", "ddpm_tiny")
# Models whose `model.init` values (same key) are compared with the original's.
FINGERPRINT_MODELS = ("ncsnpp_tiny", "ddpm_tiny")


def tiny_inputs(name, config):
    """Deterministic (x [2, 16, 16, 3] in [0, 1), labels [2]) for a tiny model."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    size, channels = config.data.image_size, config.data.num_channels
    x = rng.uniform(size=(2, size, size, channels)).astype(np.float32)
    if config.model.name == "ncsnpp" and config.model.embedding_type == "fourier":
        labels = np.array([0.05, 20.0], np.float32)  # sigma(t)
    elif config.training.continuous:
        labels = np.array([3.7, 990.2], np.float32)  # 999 t
    else:
        labels = np.array([1, config.model.num_scales - 1], np.int32)  # indices
    return x, labels


def numpy_params(flat_shapes):
    """Deterministic well-scaled params for golden tests, from {path: shape} alone.

    Every leaf gets its own generator (seeded by the path), so values do not depend on the
    order or on jax's PRNG. Kernels ~ N(0, 1/fan_in), biases ~ 0.1 N, GroupNorm scales
    1 + 0.1 N, the Fourier W ~ 16 N (the model's own scale); the original zero-ish inits
    (init_scale=0) would hide mapping mistakes.
    """
    params = {}
    for path, shape in flat_shapes.items():
        rng = np.random.default_rng(zlib.crc32("/".join(path).encode()))
        z = rng.standard_normal(shape)
        leaf, parent = path[-1], path[-2]
        if parent.startswith("GaussianFourierProjection"):
            value = 16.0 * z
        elif leaf == "scale":
            value = 1.0 + 0.1 * z
        elif len(shape) == 1:
            value = 0.1 * z
        else:
            value = z / np.sqrt(np.prod(shape[:-1]))
        params[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(params)


def abstract_variables(model, config, batch=1):
    """`jax.eval_shape` of `model.init` (no allocation); integer labels for discrete models."""
    size, channels = config.data.image_size, config.data.num_channels
    x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
    labels_dtype = jnp.float32 if config.training.continuous else jnp.int32
    labels = jax.ShapeDtypeStruct((batch,), labels_dtype)
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda x, y: model.init(keys, x, y, train=False), x, labels)


def init_params(model, name, config):
    """`model.init` params for the keys params=key(0), dropout=key(1) and `tiny_inputs`."""
    x, labels = tiny_inputs(name, config)
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.jit(lambda x, y: model.init(keys, x, y, train=False))(x, labels)["params"]


def init_fingerprint(params):
    """[first element, sum |value|] of every param leaf, sorted by path (float64)."""
    flat = traverse_util.flatten_dict(params)
    leaves = [np.asarray(flat[p], np.float64) for p in sorted(flat)]
    return np.array([[v.ravel()[0], np.abs(v).sum()] for v in leaves])


def param_table(variables):
    """{'a/b/c': shape} of every leaf, sorted by path."""
    flat = traverse_util.flatten_dict(variables["params"])
    return {"/".join(p): list(v.shape) for p, v in sorted(flat.items())}


def _num_params(variables):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))


# ---------------------------------------------------------------------------------------------
# Full-size parameter parity (jax.eval_shape only).
# ---------------------------------------------------------------------------------------------

# Counts of the original score_sde models (reference facts §3), Fourier W included.
FULL_SIZE_COUNTS = {
    "ve/cifar10_ncsnpp_continuous": (cifar10_ncsnpp_continuous, 62_758_915),
    "ve/cifar10_ncsnpp": (cifar10_ncsnpp, 62_693_251),
    "ve/cifar10_ncsnpp_deep_continuous": (cifar10_ncsnpp_deep_continuous, 107_587_075),
    "vp/cifar10_ddpmpp": (cifar10_ddpmpp, 61_804_419),
    "subvp/cifar10_ddpmpp_continuous": (subvp_ddpmpp_continuous, 61_804_419),
    "vp/cifar10_ddpmpp_deep_continuous": (cifar10_ddpmpp_deep_continuous, 106_632_579),
    "vp/ddpm/cifar10": (vp_ddpm_cifar10, 35_218_947),
    "ve/church_ncsnpp_continuous (256 px)": (church_ncsnpp_continuous, 65_574_549),
}


@pytest.mark.parametrize("name", list(FULL_SIZE_COUNTS))
def test_full_size_parameter_count_matches_original(name):
    module, expected = FULL_SIZE_COUNTS[name]
    config = module.get_config()
    variables = abstract_variables(mutils.get_model(config), config)
    assert list(variables) == ["params"]
    assert _num_params(variables) == expected


def _counts_by_prefix(names):
    counts = {}
    for n in names:
        prefix, _, index = n.rpartition("_")
        assert index.isdigit(), n
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def test_full_size_ncsnpp_auto_names_match_original_checkpoints():
    config = cifar10_ncsnpp_continuous.get_config()
    params = abstract_variables(mutils.get_model(config), config)["params"]
    assert _counts_by_prefix(params) == {
        "Conv": 2,
        "Dense": 2,
        "GroupNorm": 1,
        "GaussianFourierProjection": 1,
        "ResnetBlockBigGANpp": 44,
        "AttnBlockpp": 6,
        "Downsample": 3,
    }
    # Every index 0..k-1 exists (auto-names are contiguous).
    assert {f"ResnetBlockBigGANpp_{i}" for i in range(44)} <= set(params)
    assert params["GaussianFourierProjection_0"]["W"].shape == (128,)
    # First block 128 -> 128: no skip conv; a down block has the 1x1 skip conv `Conv_2`.
    assert set(params["ResnetBlockBigGANpp_0"]) == {
        "GroupNorm_0",
        "Conv_0",
        "Dense_0",
        "GroupNorm_1",
        "Conv_1",
    }
    assert params["ResnetBlockBigGANpp_4"]["Conv_2"]["kernel"].shape == (1, 1, 128, 128)
    assert params["ResnetBlockBigGANpp_4"]["GroupNorm_0"]["scale"].shape == (128,)
    # Pyramid Downsample = fused FIR conv with the original `weight` / `bias` names.
    assert params["Downsample_0"]["Conv2d_0"]["weight"].shape == (3, 3, 3, 128)
    assert set(params["AttnBlockpp_0"]) == {"GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"}
    assert set(params["AttnBlockpp_0"]["NIN_0"]) == {"W", "b"}


def test_full_size_ddpm_auto_names_match_original_checkpoints():
    config = vp_ddpm_cifar10.get_config()
    params = abstract_variables(mutils.get_model(config), config)["params"]
    # 8 down + 2 middle + 12 up blocks; attention at 16x16: 2 down, 1 middle, 1 up (once per
    # level, after its blocks).
    assert _counts_by_prefix(params) == {
        "Conv": 2,
        "Dense": 2,
        "GroupNorm": 1,
        "ResnetBlockDDPM": 22,
        "AttnBlock": 4,
        "Downsample": 3,
        "Upsample": 3,
    }
    assert params["ResnetBlockDDPM_2"]["NIN_0"]["W"].shape == (128, 256)  # 128 -> 256 skip
    assert params["Downsample_0"]["Conv_0"]["kernel"].shape == (3, 3, 128, 128)


# ---------------------------------------------------------------------------------------------
# Tiny models: snapshot, golden outputs from the original, dropout.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SNAPSHOT_MODELS)
def test_tiny_parameter_paths_and_count_match_snapshot(name):
    snapshot = json.loads(SNAPSHOT_FILE.read_text())[name]
    config = TINY_CONFIGS[name]()
    variables = abstract_variables(mutils.get_model(config), config)
    assert param_table(variables) == snapshot["params"]
    assert _num_params(variables) == snapshot["num_params"]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN_FILE) as f:
        return dict(f)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_tiny_model_reproduces_original_output(golden, name):
    config = TINY_CONFIGS[name]()
    model = mutils.get_model(config)
    x, labels = tiny_inputs(name, config)
    np.testing.assert_array_equal(x, golden[f"{name}/x"])
    np.testing.assert_array_equal(labels, golden[f"{name}/labels"])
    shapes = traverse_util.flatten_dict(abstract_variables(model, config)["params"])
    params = numpy_params({p: v.shape for p, v in shapes.items()})
    with jax.numpy_rank_promotion("raise"), jax.default_matmul_precision("highest"):
        out = np.asarray(model.apply({"params": params}, x, labels, train=False))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    ref = golden[f"{name}/out"]
    # Same ops as the original except the FIR convs (different but equivalent XLA convs):
    # measured max |diff| / max |ref| <= 5e-7 per sample, so 1e-5 leaves 20x headroom.
    for i in range(len(ref)):
        np.testing.assert_allclose(out[i], ref[i], rtol=0, atol=1e-5 * np.abs(ref[i]).max())


def test_dropout_uses_the_dropout_stream_only_in_train_mode():
    config = ddpmpp_tiny.get_config()
    config.model.dropout = 0.5
    model = mutils.get_model(config)
    x, labels = tiny_inputs("ddpmpp_tiny", config)
    shapes = traverse_util.flatten_dict(abstract_variables(model, config)["params"])
    variables = {"params": numpy_params({p: v.shape for p, v in shapes.items()})}
    apply = jax.jit(model.apply, static_argnames="train")
    eval_out = apply(variables, x, labels, train=False)
    k1, k2 = jax.random.split(jax.random.key(0))
    a = apply(variables, x, labels, train=True, rngs={"dropout": k1})
    b = apply(variables, x, labels, train=True, rngs={"dropout": k1})
    c = apply(variables, x, labels, train=True, rngs={"dropout": k2})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, eval_out)
    with pytest.raises(Exception, match="dropout"):
        apply(variables, x, labels, train=True)


@pytest.fixture(scope="module")
def tiny_init():
    """{name: init params} of the FINGERPRINT_MODELS (jitted init, computed once)."""
    return {
        name: init_params(mutils.get_model(TINY_CONFIGS[name]()), name, TINY_CONFIGS[name]())
        for name in FINGERPRINT_MODELS
    }


@pytest.mark.parametrize("name", FINGERPRINT_MODELS)
def test_init_values_match_original(golden, tiny_init, name):
    # Same paths + same initialisers => same values: flax derives each param's key from its path.
    np.testing.assert_allclose(
        init_fingerprint(tiny_init[name]), golden[f"{name}/init_fingerprint"], rtol=1e-6
    )


def test_init_schemes_follow_ddpm_defaults(tiny_init):
    params = tiny_init["ncsnpp_tiny"]
    block = params["ResnetBlockBigGANpp_1"]  # 16 -> 16 channels at 16x16
    # default_init(1): U(+-sqrt(3 / fan_avg)), fan_avg = (fan_in + fan_out) / 2.
    bound = np.sqrt(3.0 / (9 * (16 + 16) / 2))
    w = np.abs(block["Conv_0"]["kernel"])
    assert w.max() <= bound and w.max() > 0.9 * bound
    # init_scale=0 -> 1e-10: the second conv and the attention output NIN are ~0.
    assert np.abs(block["Conv_1"]["kernel"]).max() < 1e-4 * bound
    assert np.abs(params["AttnBlockpp_0"]["NIN_3"]["W"]).max() < 1e-5
    # NIN default scale 0.1: bound sqrt(0.3 / fan_avg).
    nin = np.abs(params["AttnBlockpp_0"]["NIN_0"]["W"])
    assert 0.9 * np.sqrt(0.3 / 32) < nin.max() <= np.sqrt(0.3 / 32)
    np.testing.assert_array_equal(block["Conv_0"]["bias"], 0.0)
    np.testing.assert_array_equal(block["GroupNorm_0"]["scale"], 1.0)


# ---------------------------------------------------------------------------------------------
# Embeddings and FIR resampling against NumPy references.
# ---------------------------------------------------------------------------------------------


def _timestep_embedding_ref(t, dim, max_positions=10000):
    half = dim // 2
    freqs = np.exp(-np.log(max_positions) * np.arange(half) / (half - 1))
    angles = np.asarray(t, np.float64)[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return np.pad(emb, [(0, 0), (0, dim % 2)])


@pytest.mark.parametrize("dim", [16, 7])
def test_timestep_embedding_matches_numpy(dim):
    t = np.array([0.0, 1.0, 3.7, 998.9], np.float32)
    out = layers.get_timestep_embedding(jnp.asarray(t), dim)
    # float32 sin/cos of angles up to ~1e3 rad: absolute error ~1e3 * eps32 ~ 1e-4.
    np.testing.assert_allclose(out, _timestep_embedding_ref(t, dim), rtol=0, atol=2e-4)
    assert out.shape == (4, dim)
    np.testing.assert_array_equal(
        out[0], [0.0] * (dim // 2) + [1.0] * (dim // 2) + [0.0] * (dim % 2)
    )


def test_gaussian_fourier_projection_matches_numpy_and_w_is_frozen():
    w = np.array([0.5, -1.25, 3.0], np.float32)
    x = np.array([-1.0, 0.0, 0.3], np.float32)
    module = layerspp.GaussianFourierProjection(embedding_size=3, scale=16.0)
    out = module.apply({"params": {"W": w}}, x)
    angles = 2 * np.pi * x.astype(np.float64)[:, None] * w[None, :]
    np.testing.assert_allclose(out, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-6)
    grad = jax.grad(lambda p: module.apply(p, x).sum())({"params": {"W": w}})
    np.testing.assert_array_equal(grad["params"]["W"], 0.0)
    # Init: W ~ N(0, scale^2) in params.
    big = layerspp.GaussianFourierProjection(embedding_size=20000, scale=16.0)
    w_init = big.init(jax.random.key(0), x)["params"]["W"]
    assert abs(float(jnp.std(w_init)) / 16.0 - 1) < 0.03  # 20k samples: std error ~0.5%


def _upfirdn_ref(x, k, up, down, pad0, pad1):
    """Direct-loop NumPy upfirdn with equal factors/pads on both axes (float64, NHWC)."""
    n, h, w, c = x.shape
    u = np.zeros((n, h * up, w * up, c))
    u[:, ::up, ::up] = x
    p = np.pad(u, [(0, 0), (max(pad0, 0), max(pad1, 0)), (max(pad0, 0), max(pad1, 0)), (0, 0)])
    p = p[:, max(-pad0, 0) : p.shape[1] - max(-pad1, 0), max(-pad0, 0) : p.shape[2] - max(-pad1, 0)]
    kh, kw = k.shape
    out = np.zeros((n, p.shape[1] - kh + 1, p.shape[2] - kw + 1, c))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            for a in range(kh):
                for b in range(kw):
                    # True convolution: y[i] = sum_m p[i + kh - 1 - m] k[m].
                    out[:, i, j] += p[:, i + a, j + b] * k[kh - 1 - a, kw - 1 - b]
    return out[:, ::down, ::down]


def _fir(k, scale):
    k = np.outer(k, k).astype(np.float64)
    return k / k.sum() * scale


def _conv_same_ref(x, w):
    """'SAME' stride-1 correlation, odd kernel (float64, NHWC x HWIO)."""
    kh = w.shape[0]
    r = kh // 2
    p = np.pad(x, [(0, 0), (r, r), (r, r), (0, 0)])
    out = np.zeros(x.shape[:3] + (w.shape[3],))
    for a in range(kh):
        for b in range(kh):
            out += p[:, a : a + x.shape[1], b : b + x.shape[2]] @ w[a, b]
    return out


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(2, 8, 6, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "up,down,pad0,pad1", [(1, 1, 0, 0), (2, 1, 2, 1), (1, 2, 1, 1), (3, 2, -1, 2), (2, 3, 1, -2)]
)
def test_upfirdn_2d_matches_direct_loops(images, up, down, pad0, pad1):
    k = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)  # asymmetric, not separable
    out = up_or_down_sampling.upfirdn_2d(images, k, up, up, down, down, pad0, pad1, pad0, pad1)
    np.testing.assert_allclose(out, _upfirdn_ref(images, k, up, down, pad0, pad1), atol=1e-5)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 1), (1, 2, 1)])
@pytest.mark.parametrize("factor", [2, 3])
def test_upsample_and_downsample_2d_match_numpy(images, taps, factor):
    p = len(taps) - factor
    up = up_or_down_sampling.upsample_2d(images, taps, factor=factor, gain=2.0)
    ref = _upfirdn_ref(
        images, _fir(taps, 2.0 * factor**2), factor, 1, (p + 1) // 2 + factor - 1, p // 2
    )
    assert up.shape == (2, 8 * factor, 6 * factor, 3)
    np.testing.assert_allclose(up, ref, atol=1e-5)
    x = images[:, :6]
    down = up_or_down_sampling.downsample_2d(x, taps, factor=factor)
    ref = _upfirdn_ref(x, _fir(taps, 1.0), 1, factor, (p + 1) // 2, p // 2)
    assert down.shape == (2, 6 // factor, 6 // factor, 3)
    np.testing.assert_allclose(down, ref, atol=1e-5)


def test_fir_resampling_of_a_constant_image():
    c = 2.5
    x = np.full((1, 8, 8, 1), c, np.float32)
    down = np.asarray(up_or_down_sampling.downsample_2d(x, (1, 3, 3, 1)))[0, :, :, 0]
    np.testing.assert_allclose(down[1:-1, 1:-1], c, rtol=1e-6)  # the known FIR property
    # At the borders one tap of weight 1/8 falls on zero padding: 7/8 per axis.
    np.testing.assert_allclose(down[0, 1:-1], 7 / 8 * c, rtol=1e-6)
    np.testing.assert_allclose(down[0, 0], (7 / 8) ** 2 * c, rtol=1e-6)
    up = np.asarray(up_or_down_sampling.upsample_2d(x, (1, 3, 3, 1)))[0, :, :, 0]
    np.testing.assert_allclose(up[1:-1, 1:-1], c, rtol=1e-6)
    np.testing.assert_allclose(up[0, 1:-1], 3 / 4 * c, rtol=1e-6)


def test_default_fir_kernels_are_nearest_and_box(images):
    up = up_or_down_sampling.upsample_2d(images, factor=2)
    np.testing.assert_allclose(up, images.repeat(2, 1).repeat(2, 2), rtol=1e-6)
    np.testing.assert_allclose(up, up_or_down_sampling.naive_upsample_2d(images), rtol=1e-6)
    down = up_or_down_sampling.downsample_2d(images, factor=2)
    box = images.reshape(2, 4, 2, 3, 2, 3).mean((2, 4))
    np.testing.assert_allclose(down, box, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(up_or_down_sampling.naive_downsample_2d(images), box, atol=1e-6)


def test_fused_resampling_convs_equal_sequential_ops_away_from_borders(images):
    # Padding happens once in the fused ops, so only the 1-pixel border differs.
    w = np.random.default_rng(2).normal(size=(3, 3, 3, 5)).astype(np.float32)
    taps = (1, 3, 3, 1)
    with jax.default_matmul_precision("highest"):
        up = np.asarray(up_or_down_sampling.upsample_conv_2d(images, w, taps))
        down = np.asarray(up_or_down_sampling.conv_downsample_2d(images, w, taps))
    up_ref = _conv_same_ref(_upfirdn_ref(images, _fir(taps, 4.0), 2, 1, 2, 1), w)
    down_ref = _upfirdn_ref(_conv_same_ref(images, w), _fir(taps, 1.0), 1, 2, 1, 1)
    assert up.shape == (2, 16, 12, 5) and down.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(up[:, 1:-1, 1:-1], up_ref[:, 1:-1, 1:-1], atol=1e-4)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], down_ref[:, 1:-1, 1:-1], atol=1e-4)
    assert not np.allclose(up[:, 0], up_ref[:, 0], atol=1e-3)  # the border really differs


def test_fused_resampling_convs_match_original_at_borders(golden, images):
    # Golden arrays from the original score_sde functions (borders included).
    w = golden["fir/w"]
    with jax.default_matmul_precision("highest"):
        up = up_or_down_sampling.upsample_conv_2d(golden["fir/x"], w, (1, 3, 3, 1))
        down = up_or_down_sampling.conv_downsample_2d(golden["fir/x"], w, (1, 3, 3, 1))
    np.testing.assert_allclose(up, golden["fir/upsample_conv_2d"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(down, golden["fir/conv_downsample_2d"], rtol=1e-5, atol=1e-5)


def test_conv2d_module_names_and_shapes():
    x = jnp.zeros((1, 8, 8, 4))
    for kwargs, size in [({"up": True}, 16), ({"down": True}, 4), ({}, 8)]:
        conv = up_or_down_sampling.Conv2d(6, 3, kernel_init=layers.default_init(), **kwargs)
        variables = conv.init(jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, variables) == {
            "params": {"weight": (3, 3, 4, 6), "bias": (6,)}
        }
        assert conv.apply(variables, x).shape == (1, size, size, 6)


# ---------------------------------------------------------------------------------------------
# models.utils: factory, tables, get_score_fn scaling.
# ---------------------------------------------------------------------------------------------


def test_get_model_rejects_unknown_names_and_dispatches_ncsnv2():
    config = ncsnpp_tiny.get_config()
    config.model.name = "unet9000"
    with pytest.raises(ValueError, match="unet9000.*'ddpm'.*'ncsnpp'"):
        mutils.get_model(config)
    model = mutils.get_model(ncsnv2_tiny.get_config())
    assert type(model).__module__ == "models.ncsnv2"


def test_get_model_refuses_fourier_features_for_discrete_training():
    config = ncsnpp_tiny.get_config()
    config.training.continuous = False
    with pytest.raises(ValueError, match="continuous"):
        mutils.get_model(config)


def test_factory_passes_descending_sigmas_only_where_used():
    positional = mutils.get_model(_shrink.shrink(cifar10_ncsnpp.get_config()))
    assert len(positional.sigmas) == 10 and positional.sigmas[0] == pytest.approx(50.0)
    assert mutils.get_model(ncsnpp_tiny.get_config()).sigmas is None  # Fourier: labels = sigma
    assert mutils.get_model(ddpm_tiny.get_config()).sigmas is None  # no scale_by_sigma


def test_get_sigmas_is_descending_geometric():
    config = ml_collections.ConfigDict(
        {"model": {"sigma_min": 0.01, "sigma_max": 50.0, "num_scales": 5}}
    )
    sigmas = np.asarray(mutils.get_sigmas(config))
    np.testing.assert_allclose(sigmas, 50.0 * (0.01 / 50.0) ** (np.arange(5) / 4), rtol=1e-5)


def test_get_ddpm_params_tables():
    config = ml_collections.ConfigDict(
        {"model": {"beta_min": 0.1, "beta_max": 20.0, "num_scales": 1000}}
    )
    params = mutils.get_ddpm_params(config)
    np.testing.assert_allclose(params["betas"][[0, -1]], [1e-4, 0.02])
    np.testing.assert_allclose(params["alphas_cumprod"], np.cumprod(1 - params["betas"]))
    np.testing.assert_allclose(
        params["sqrt_1m_alphas_cumprod"] ** 2 + params["sqrt_alphas_cumprod"] ** 2, 1.0
    )
    assert params["num_diffusion_timesteps"] == 1000


class _EchoLabels(nn.Module):
    """Stand-in network: returns its labels broadcast to x's shape (plus x * 0)."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        out = x * 0 + labels.astype(jnp.float32)[:, None, None, None]
        if train:  # dropout-like: depends on the 'dropout' key
            out = out + jax.random.uniform(self.make_rng("dropout"), (x.shape[0], 1, 1, 1))
        return out


X = np.ones((3, 2, 2, 1), np.float32)
# Not too close to 0: the VP std 1 - exp(2 lmc) loses relative precision in float32 there.
T = np.array([0.05, 0.5, 0.987], np.float32)


def _score(sde, continuous, train=False, key=None):
    score_fn = mutils.get_score_fn(sde, _EchoLabels(), {}, train=train, continuous=continuous)
    return np.asarray(score_fn(jnp.asarray(X), jnp.asarray(T), key))[:, 0, 0, 0]


def _vp_log_mean_coeff(t, beta_min=0.1, beta_max=20.0):
    t = t.astype(np.float64)
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def test_score_fn_ve_continuous_feeds_sigma_t():
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    np.testing.assert_allclose(_score(sde, True), 0.01 * 5000.0**T, rtol=1e-5)


def test_score_fn_ve_discrete_feeds_rounded_reverse_index():
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    # round((1 - t) * 999): 949.05 -> 949, 499.5 -> 500, 12.987 -> 13 (t = T is label 0).
    np.testing.assert_array_equal(_score(sde, False), [949, 500, 13])


def test_score_fn_vp_continuous_divides_by_marginal_std():
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    std = np.sqrt(1 - np.exp(2 * _vp_log_mean_coeff(T)))
    np.testing.assert_allclose(_score(sde, True), -999 * T / std, rtol=1e-5)


def test_score_fn_vp_discrete_uses_ddpm_table():
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    labels = T.astype(np.float64) * 999  # fractional labels go to the model as they are
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    std = np.sqrt(1 - np.cumprod(1 - betas))[labels.astype(int)]  # index floors: 49, 499, 986
    np.testing.assert_allclose(_score(sde, False), -labels / std, rtol=1e-5)


@pytest.mark.parametrize("continuous", [True, False])
def test_score_fn_subvp_always_uses_continuous_labels(continuous):
    sde = sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    std = 1 - np.exp(2 * _vp_log_mean_coeff(T))  # sub-VP std has no square root
    np.testing.assert_allclose(_score(sde, continuous), -999 * T / std, rtol=1e-5)


def test_score_fn_train_mode_needs_and_uses_dropout_key():
    sde = sde_lib.VESDE(N=1000)
    with pytest.raises(ValueError, match="dropout key"):
        _score(sde, False, train=True)
    a = _score(sde, False, train=True, key=jax.random.key(1))
    b = _score(sde, False, train=True, key=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(np.floor(a), [949, 500, 13])


def test_score_fn_rejects_unknown_sde():
    class CustomSDE:
        N = 10

    with pytest.raises(NotImplementedError, match="CustomSDE"):
        mutils.get_score_fn(CustomSDE(), _EchoLabels(), {})


def test_model_fn_passes_states_and_is_jittable():
    model_fn = mutils.get_model_fn(_EchoLabels(), {}, states={})
    out = jax.jit(model_fn)(jnp.asarray(X), jnp.arange(3))
    np.testing.assert_array_equal(out[:, 0, 0, 0], [0, 1, 2])

"""Tests for models/ncsnv2.py, models/layers_ncsn.py and models/normalization.py.

Full-size models are only traced (`jax.eval_shape`); forward passes use nf=16 models.
"""

import json
import pathlib

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from jax import numpy as jnp

from configs.testing import _shrink, ncsnv2_tiny
from configs.ve.ncsn import cifar10 as ncsn_cifar10
from configs.ve.ncsnv2 import bedroom as ncsnv2_bedroom
from configs.ve.ncsnv2 import cifar10 as ncsnv2_cifar10
from models import layers_ncsn, ncsnv2, normalization

TESTDATA = pathlib.Path(__file__).parent / "testdata"
FIXTURE = "fixtures/score_sde_pytorch/ncsnv2_small"


def _tiny_config(name: str) -> ml_collections.ConfigDict:
    """nf=16, 16x16, N=10 config of model `name` (plus "ncsnv2_64_torch_compat")."""
    if name == "ncsn":
        return _shrink.shrink(ncsn_cifar10.get_config())
    config = ncsnv2_tiny.get_config()
    if name == "ncsnv2_64_torch_compat":
        config.model.torch_compat = True
    else:
        config.model.name = name
    return config


def _abstract_params(model, config, batch: int = 1):
    """Parameter ShapeDtypeStructs of `model` for `config`'s image shape, without computing."""
    size, channels = config.data.image_size, config.data.num_channels
    x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.eval_shape(lambda x, y: model.init(jax.random.key(0), x, y), x, labels)["params"]


def _random_params(model, config, seed: int = 0):
    """Deterministic random parameters of `model`, drawn with NumPy over the sorted param paths.

    Faster than an eager `model.init` (~20 s on 2 CPU cores: every initialiser compiles on its
    own). Kernels ~ N(0, 1/fan_in); scales ~ 1 + N(0, 0.1²); biases and shifts ~ N(0, 0.1²).
    """
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(_abstract_params(model, config), sep="/")
    params = {}
    for path, leaf in flat.items():
        name, shape = path.rsplit("/", 1)[-1], leaf.shape
        if name == "kernel":
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name in ("alpha", "gamma", "scale", "embedding"):
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        params[tuple(path.split("/"))] = jnp.asarray(value, jnp.float32)
    return {"params": traverse_util.unflatten_dict(params)}


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- parameter counts


def _torch_cifar10():
    config = ncsnv2_cifar10.get_config()
    config.model.torch_compat = True
    return config


@pytest.mark.parametrize(
    "make_config, expected",
    [
        (ncsnv2_cifar10.get_config, 33_970_563),  # NCSNv2 CIFAR-10 (ncsnv2_64, nf=128)
        (ncsn_cifar10.get_config, 34_428_675),  # NCSN v1 CIFAR-10 (num_classes = N = 10)
        (ncsnv2_bedroom.get_config, 83_445_379),  # NCSNv2_128, LSUN bedroom 128 px
        (_torch_cifar10, 29_694_083),  # score_sde_pytorch NCSNv2 CIFAR-10 (refine3 width nf)
    ],
    ids=["ncsnv2_cifar10", "ncsn_cifar10", "ncsnv2_128_bedroom", "ncsnv2_cifar10_torch"],
)
def test_full_size_parameter_counts_match_reference(make_config, expected):
    # Reference counts: score_sde_facts.md §3 (original JAX code) and the torch fixture README.
    config = make_config()
    model = ncsnv2.from_config(config)
    assert _count(_abstract_params(model, config)) == expected


def test_ncsn_cifar10_config_uses_ten_classes():
    config = ncsn_cifar10.get_config()
    assert ncsnv2.from_config(config).num_classes == 10


# ---------------------------------------------------------------------- tiny models: structure


SNAPSHOT_NAMES = ["ncsnv2_64", "ncsnv2_128", "ncsnv2_256", "ncsn", "ncsnv2_64_torch_compat"]


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_tiny_parameter_paths_match_snapshot(name):
    # The snapshot of the plain models was made from the original score_sde module code, so this
    # guards one-to-one checkpoint mapping (see tests/testdata/README.md).
    snapshot = json.loads((TESTDATA / "ncsnv2_tiny_params.json").read_text())[name]
    config = _tiny_config(name)
    params = _abstract_params(ncsnv2.from_config(config), config, batch=2)
    flat = traverse_util.flatten_dict(params, sep="/")
    got = sorted([path, list(p.shape)] for path, p in flat.items())
    assert got == sorted(snapshot["params"])
    assert _count(params) == snapshot["num_params"]


def _tiny_inputs(config, batch: int = 2):
    """Fixed NumPy inputs: uniform images and the extreme noise levels [0, N-1]."""
    size = config.data.image_size
    x = np.random.default_rng(1).uniform(size=(batch, size, size, 3)).astype(np.float32)
    labels = np.array([0, config.model.num_scales - 1], np.int32)
    return jnp.asarray(x), jnp.asarray(labels)


@pytest.mark.parametrize("name", ["ncsnv2_64", "ncsnv2_128", "ncsnv2_256", "ncsn"])
def test_tiny_forward_matches_original_score_sde(name):
    # Golden outputs of the original score_sde modules for the same `_random_params` and inputs
    # (tests/testdata/README.md). This checks each conv's role, not just names and shapes.
    config = _tiny_config(name)
    model = ncsnv2.from_config(config)
    x, labels = _tiny_inputs(config)
    out = np.asarray(model.apply(_random_params(model, config), x, labels, train=False))
    assert out.shape == x.shape
    assert np.all(np.isfinite(out))
    expected = np.load(TESTDATA / "ncsnv2_tiny_outputs.npz")[name]
    # float32 reference computed by the same ops; measured max difference ~1e-11 relative.
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_tiny_torch_compat_forward_keeps_shape_and_is_finite():
    config = _tiny_config("ncsnv2_64_torch_compat")
    config.data.image_size = 32  # 16 -> 32 upsampling in the last RefineBlock
    model = ncsnv2.from_config(config)
    x, labels = _tiny_inputs(config)
    out = model.apply(_random_params(model, config), x, labels, train=False)
    assert out.shape == x.shape
    assert np.all(np.isfinite(out))
    assert float(jnp.std(out)) > 0.0


def test_init_follows_calling_convention(key):
    # model.init({"params", "dropout"}, x, labels, train=False), as models/utils calls it.
    config = _tiny_config("ncsnv2_64")
    config.data.image_size = 8
    model = ncsnv2.from_config(config)
    params_key, dropout_key = jax.random.split(key)
    x = jnp.full((2, 8, 8, 3), 0.5)
    labels = jnp.array([0, 9], jnp.int32)
    variables = model.init({"params": params_key, "dropout": dropout_key}, x, labels, train=False)
    assert set(variables) == {"params"}
    assert _count(variables) == 533_299
    # PyTorch-style conv init: kernel and bias ~ U(±1/sqrt(fan_in)).
    conv = variables["params"]["Conv_0"]
    bound = 1 / np.sqrt(3 * 3 * 3)
    assert float(jnp.abs(conv["kernel"]).max()) <= bound
    assert 0.5 * bound < float(jnp.abs(conv["bias"]).max()) <= bound
    assert np.all(np.isfinite(model.apply(variables, x, labels)))
    # Same key, same values as the original score_sde module code (tests/testdata/README.md): the
    # initialisers and every submodule path (hence RNG stream) match, including the order of
    # same-shaped convs, which the path/shape snapshot cannot see.
    snapshot = json.loads((TESTDATA / "ncsnv2_tiny_params.json").read_text())
    expected = snapshot["ncsnv2_64"]["init_fingerprint"]["values"]
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    assert set(flat) == set(expected)
    for path, (first, l1) in expected.items():
        value = np.asarray(flat[path], np.float64)
        np.testing.assert_allclose(value.ravel()[0], first, rtol=1e-6, err_msg=path)
        np.testing.assert_allclose(np.abs(value).sum(), l1, rtol=1e-5, err_msg=path)


def test_ncsn_output_depends_on_labels_through_embeddings(key):
    config = _tiny_config("ncsn")
    model = ncsnv2.from_config(config)
    x = jax.random.uniform(key, (1, 16, 16, 3))
    x2 = jnp.concatenate([x, x])
    out = model.apply(_random_params(model, config), x2, jnp.array([0, 7], jnp.int32))
    # Same image, different noise level: only the normalisation embeddings differ.
    assert not np.allclose(out[0], out[1], rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------ scale_by_sigma


def test_scale_by_sigma_divides_by_sigmas_at_labels(key):
    config = _tiny_config("ncsnv2_64")
    model = ncsnv2.from_config(config)
    assert model.scale_by_sigma
    x = jax.random.uniform(key, (1, 16, 16, 3))
    x = jnp.concatenate([x, x, x])  # one image at three noise levels
    labels = jnp.array([0, 4, 9], jnp.int32)
    variables = _random_params(model, config)
    scaled = np.asarray(model.apply(variables, x, labels))
    unscaled = np.asarray(model.clone(scale_by_sigma=False).apply(variables, x, labels))
    # NCSNv2 is unconditional: the unscaled output ignores the label.
    np.testing.assert_allclose(unscaled[0], unscaled[2], rtol=1e-6)
    # sigma_i = sigma_max (sigma_min / sigma_max)^(i / (N - 1)), computed by hand.
    sigma_min, sigma_max, n = 0.01, 50.0, 10
    sigmas = sigma_max * (sigma_min / sigma_max) ** (np.array([0, 4, 9]) / (n - 1))
    np.testing.assert_allclose(scaled, unscaled / sigmas[:, None, None, None], rtol=1e-5)


def test_from_config_sigmas_are_descending_geometric():
    config = _tiny_config("ncsnv2_64")
    sigmas = np.array(ncsnv2.from_config(config).sigmas)
    assert sigmas.shape == (10,)
    np.testing.assert_allclose(sigmas[[0, -1]], [50.0, 0.01], rtol=1e-12)
    ratios = sigmas[1:] / sigmas[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    assert ratios[0] < 1


# ------------------------------------------------------------------------------- from_config


def test_from_config_rejects_unknown_name():
    config = _tiny_config("ncsnv2_64")
    config.model.name = "ncsnv3"
    with pytest.raises(ValueError, match="ncsnv2_128"):
        ncsnv2.from_config(config)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("ncsn", ncsnv2.NCSN),
        ("ncsnv2_64", ncsnv2.NCSNv2),
        ("ncsnv2_128", ncsnv2.NCSNv2_128),
        ("ncsnv2_256", ncsnv2.NCSNv2_256),
    ],
)
def test_from_config_dispatches_on_name(name, cls):
    model = ncsnv2.from_config(_tiny_config(name))
    assert type(model) is cls
    assert (model.nf, model.image_size, model.num_channels) == (16, 16, 3)


def test_from_config_defaults_for_missing_optional_fields():
    config = _tiny_config("ncsn")
    model_config = config.model.to_dict()
    del model_config["num_classes"]
    model_config.pop("torch_compat", None)
    config.model = ml_collections.ConfigDict(model_config)
    config.model.num_scales = 7
    model = ncsnv2.from_config(config)
    assert model.num_classes == 7
    assert model.torch_compat is False


def test_ncsn_without_num_classes_raises(key):
    model = ncsnv2.NCSN(nf=8, image_size=8, sigmas=(1.0,))
    with pytest.raises(ValueError, match="num_classes"):
        model.init(key, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32))


def test_get_normalization_rejects_unknown_names():
    with pytest.raises(ValueError, match="InstanceNorm"):
        normalization.get_normalization("BatchNorm")
    with pytest.raises(ValueError, match="InstanceNorm"):
        normalization.get_normalization("GroupNorm", conditional=True, num_classes=3)


# ----------------------------------------------------------------------------- InstanceNorm++


def _instance_norm_plus_np(x, alpha, gamma, beta, ddof):
    """NumPy float64 InstanceNorm++ (Song & Ermon 2019, App. A.1); per-sample or shared params."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=(1, 2))  # [B, C]
    s = x.std(axis=(1, 2))  # biased, as torch InstanceNorm2d
    m = mu.mean(axis=1, keepdims=True)
    v = mu.var(axis=1, ddof=ddof, keepdims=True)
    means_plus = (mu - m) / np.sqrt(v + 1e-5)
    h = (x - mu[:, None, None, :]) / np.sqrt(s[:, None, None, :] ** 2 + 1e-5)
    h = h + (alpha * means_plus)[:, None, None, :]
    return gamma[:, None, None, :] * h + beta[:, None, None, :]


@pytest.mark.parametrize("ddof", [0, 1])
def test_instance_norm_plus_matches_numpy(ddof, key):
    keys = jax.random.split(key, 4)
    # Channel offsets make the channel means (the "++" term) matter.
    x = 2.0 * jax.random.normal(keys[0], (3, 5, 4, 6)) + jnp.arange(6.0)
    alpha, gamma, beta = (jax.random.normal(k, (6,)) for k in keys[1:])
    layer = normalization.get_normalization("InstanceNorm++", ddof=ddof)()
    params = {
        p: v.reshape(1, 1, 1, 6) for p, v in zip(("alpha", "gamma", "beta"), (alpha, gamma, beta))
    }
    assert jax.tree.map(jnp.shape, layer.init(key, x)["params"]) == jax.tree.map(jnp.shape, params)
    out = layer.apply({"params": params}, x)
    expected = _instance_norm_plus_np(
        x, *(np.broadcast_to(v, (3, 6)) for v in (alpha, gamma, beta)), ddof
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    other = _instance_norm_plus_np(
        x, *(np.broadcast_to(v, (3, 6)) for v in (alpha, gamma, beta)), 1 - ddof
    )
    assert not np.allclose(out, other, rtol=1e-5, atol=1e-5)  # the two estimators differ here


@pytest.mark.parametrize("ddof", [0, 1])
def test_conditional_instance_norm_plus_matches_numpy(ddof, key):
    keys = jax.random.split(key, 3)
    x = jax.random.normal(keys[0], (3, 4, 4, 5)) + jnp.arange(5.0)
    table = jax.random.normal(keys[1], (7, 15))  # rows [gamma | alpha | beta]
    y = jnp.array([6, 0, 3])
    layer = normalization.get_normalization(
        "InstanceNorm++", conditional=True, num_classes=7, ddof=ddof
    )()
    init = layer.init(keys[2], x, y)["params"]
    assert jax.tree.map(jnp.shape, init) == {"Embed_0": {"embedding": (7, 15)}}
    # Init: gamma, alpha ~ N(1, 0.02^2), beta = 0.
    np.testing.assert_allclose(init["Embed_0"]["embedding"][:, :10], 1.0, atol=0.1)
    np.testing.assert_array_equal(init["Embed_0"]["embedding"][:, 10:], 0.0)
    out = layer.apply({"params": {"Embed_0": {"embedding": table}}}, x, y)
    rows = np.asarray(table)[np.asarray(y)]
    gamma, alpha, beta = rows[:, :5], rows[:, 5:10], rows[:, 10:]
    np.testing.assert_allclose(
        out, _instance_norm_plus_np(x, alpha, gamma, beta, ddof), rtol=1e-5, atol=1e-5
    )


def test_instance_norm_plus_init_follows_original(key):
    params = normalization.InstanceNorm2dPlus().init(key, jnp.ones((1, 2, 2, 256)))["params"]
    for name in ("alpha", "gamma"):
        assert params[name].shape == (1, 1, 1, 256)
        assert abs(float(params[name].mean()) - 1.0) < 0.01
        assert 0.015 < float(params[name].std()) < 0.025
    np.testing.assert_array_equal(params["beta"], 0.0)


# ------------------------------------------------------------------------------- upsampling


def test_align_corners_resize_matches_torch_formula(key):
    # torch bilinear, align_corners=True: output i samples input at i * (n_in - 1) / (n_out - 1).
    x = jax.random.normal(key, (2, 3, 4, 2))
    out = np.asarray(layers_ncsn.resize_bilinear_align_corners(x, (5, 7)))
    xn = np.asarray(x, np.float64)

    def interp(a, n_out, axis):
        n_in = a.shape[axis]
        src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
        lo = np.floor(src).astype(int).clip(0, n_in - 2)
        w = (src - lo).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
        return np.take(a, lo, axis) * (1 - w) + np.take(a, lo + 1, axis) * w

    np.testing.assert_allclose(out, interp(interp(xn, 5, 1), 7, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out[:, [0, -1]][:, :, [0, -1]], xn[:, [0, -1]][:, :, [0, -1]], rtol=1e-6
    )
    # The half-pixel resize of the JAX original does not keep the corners.
    half_pixel = jax.image.resize(x, (2, 5, 7, 2), "bilinear")
    assert not np.allclose(out, half_pixel, atol=1e-3)


# ------------------------------------------------------------ score_sde_pytorch fixture parity


def _load_fixture(shared_dir):
    folder = shared_dir / FIXTURE
    if not folder.exists():
        pytest.skip(f"{FIXTURE} is not present")
    config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text()))
    state_dict = dict(np.load(folder / "state_dict.npz"))
    io = dict(np.load(folder / "io.npz"))
    return config, state_dict, io


def test_torch_compat_ncsnv2_reproduces_pytorch_fixture(shared_dir):
    config, state_dict, io = _load_fixture(shared_dir)
    assert config.model.torch_compat
    model = ncsnv2.from_config(config)
    x, labels = io["x_nhwc"], io["labels"].astype(np.int32)
    template = jax.eval_shape(model.init, jax.random.key(0), x, labels)
    params = ncsnv2.torch_to_flax_ncsnv2(state_dict, template)
    assert _count(params) == 466_451
    # The sigmas table (torch float64 buffer) equals ours.
    np.testing.assert_allclose(model.sigmas, state_dict["sigmas"], rtol=1e-12)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(model.apply({"params": params}, x, labels))
    ref = io["out_nhwc"]
    for i in range(ref.shape[0]):
        # Fixture README: float32 reference noise ~4e-6 of each sample's max |out|.
        err = np.abs(out[i] - ref[i]).max()
        assert err <= 1e-4 * np.abs(ref[i]).max(), (i, err, np.abs(ref[i]).max())


def test_torch_to_flax_rejects_incomplete_or_unknown_entries(shared_dir):
    config, state_dict, io = _load_fixture(shared_dir)
    model = ncsnv2.from_config(config)
    template = jax.eval_shape(
        model.init, jax.random.key(0), io["x_nhwc"], io["labels"].astype(np.int32)
    )
    missing = {k: v for k, v in state_dict.items() if k != "refine2.msf.convs.1.bias"}
    with pytest.raises(ValueError, match="no torch counterpart"):
        ncsnv2.torch_to_flax_ncsnv2(missing, template)
    extra = {**state_dict, "refine2.msf.convs.2.weight": state_dict["refine2.msf.convs.1.weight"]}
    with pytest.raises(ValueError, match="refine2.msf.convs.2"):
        ncsnv2.torch_to_flax_ncsnv2(extra, template)
    # A torch state dict does not fit the JAX-original architecture (refine3 width 2nf).
    jax_model = model.clone(torch_compat=False)
    jax_template = jax.eval_shape(
        jax_model.init, jax.random.key(0), io["x_nhwc"], io["labels"].astype(np.int32)
    )
    with pytest.raises(ValueError, match="shape"):
        ncsnv2.torch_to_flax_ncsnv2(state_dict, jax_template)


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 16), 4), ((3, 4, 4, 64), 32), ((2, 5, 8), 2)])
def test_group_norm_matches_float64_and_flax(shape, groups):
    """`normalization.GroupNorm`: the float64 closed form (per sample and group: (x - mean) /
    sqrt(var + eps) * scale + bias), flax's `nn.GroupNorm` params and values, and its gradients."""
    kx, ks, kb = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape) * 3 + 1.5
    c = shape[-1]
    params = {"scale": jax.random.normal(ks, (c,)), "bias": jax.random.normal(kb, (c,))}
    ours, theirs = normalization.GroupNorm(groups), nn.GroupNorm(num_groups=groups, epsilon=1e-6)
    assert jax.tree.map(jnp.shape, ours.init(kx, x)) == jax.tree.map(jnp.shape, theirs.init(kx, x))
    x64 = np.asarray(x, np.float64).reshape(shape[0], -1, groups, c // groups)
    mean = x64.mean(axis=(1, 3), keepdims=True)
    var = x64.var(axis=(1, 3), keepdims=True)
    want = ((x64 - mean) / np.sqrt(var + 1e-6)).reshape(shape)
    want = want * np.asarray(params["scale"], np.float64) + np.asarray(params["bias"], np.float64)
    got = ours.apply({"params": params}, x)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(got, theirs.apply({"params": params}, x), rtol=0, atol=4e-6 * scale)

    def loss(m):
        return lambda p, x: jnp.sum(jnp.sin(m.apply({"params": p}, x)))

    for a, b in zip(
        jax.grad(loss(ours), (0, 1))(params, x), jax.grad(loss(theirs), (0, 1))(params, x)
    ):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(u, v, rtol=0, atol=1e-5 * float(np.abs(v).max()))
    with pytest.raises(ValueError, match="multiple of 3"):
        normalization.GroupNorm(3).init(kx, x[..., :4])  # 4 channels, 3 groups

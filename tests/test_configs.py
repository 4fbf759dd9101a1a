"""Tests for configs/: every config loads, paper values, the original's config bugs are fixed.

Expected values come from yang-song/score_sde @ 0acb9e0 (configs/) and the paper (arXiv
2011.13456, App. G-H); see shared/reference/score_sde_facts.md §2.
"""

import ast
import importlib
import pathlib
import re
import sys

import ml_collections
import pytest

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"

# Names the rest of the code base accepts (score_sde's registries).
SDES = {"vesde", "vpsde", "subvpsde", "tutorialvesde"}
MODELS = {"ncsnpp", "ddpm", "ncsn", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256"}
PREDICTORS = {"euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none"}
CORRECTORS = {"langevin", "ald", "none"}
DATA_SOURCES = {"tfds", "idx", "cifar_archive", "image_folder", "npz", "tfrecords"}


def _module_names():
    """Dotted names of all config modules under configs/ (no packages, no `_private` helpers)."""
    names = []
    for path in sorted(CONFIGS_DIR.rglob("*.py")):
        if path.name.startswith("_"):
            continue
        rel = path.relative_to(CONFIGS_DIR.parent).with_suffix("")
        names.append(".".join(rel.parts))
    return names


ALL_MODULES = _module_names()
DEFAULT_MODULES = [m for m in ALL_MODULES if m.split(".")[-1].startswith("default_")]
ALL_EXPERIMENTS = [m.removeprefix("configs.") for m in ALL_MODULES if m not in DEFAULT_MODULES]
# GAN configs for DDLS (model.name='dcgan'): no SDE / sampler fields; checked at the end.
GAN_EXPERIMENTS = [e for e in ALL_EXPERIMENTS if e.startswith("ddls.") or e == "testing.dcgan_tiny"]
# Score-model experiment configs.
EXPERIMENTS = [e for e in ALL_EXPERIMENTS if e not in GAN_EXPERIMENTS]


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def get(name):
    """The config of `configs/<name>.py`, e.g. get('ve/cifar10_ncsnpp')."""
    module = importlib.import_module("configs." + name.replace("/", "."))
    return module.get_config()


def get_default(dataset):
    module = importlib.import_module(f"configs.default_{dataset}_configs")
    return module.get_default_configs()


def flat(config):
    return _flatten(config.to_dict())


def test_discovery_finds_every_config():
    # 42 original experiment configs - 3 defaults + 4 tiny testing configs + 1 demo config
    # + 2 tutorial-SDE configs (sigma 25 and 50).
    assert len(EXPERIMENTS) == 46, EXPERIMENTS
    assert sum(e.startswith("demo.") for e in EXPERIMENTS) == 1
    assert sum(e.startswith("tutorial.") for e in EXPERIMENTS) == 2
    assert len(DEFAULT_MODULES) == 4, DEFAULT_MODULES
    assert sum(e.startswith("testing.") for e in EXPERIMENTS) == 4
    # DDLS: two DCGAN configs and their tiny testing variant.
    assert sorted(GAN_EXPERIMENTS) == [
        "ddls.cifar10_dcgan",
        "ddls.cifar10_dcgan_pretrained",
        "ddls.fashion_mnist_dcgan",
        "testing.dcgan_tiny",
    ]


@pytest.mark.parametrize("module_name", ALL_MODULES)
def test_config_module_loads_without_torch(module_name):
    module = importlib.import_module(module_name)
    if module_name in DEFAULT_MODULES:
        config = module.get_default_configs()
    else:
        config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    assert "device" not in config  # the PyTorch-only key
    assert "torch" not in sys.modules
    # No torch import anywhere in the source, even behind a branch.
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(not a.name.split(".")[0] == "torch" for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "torch"
    # Serialisable, so run_lib can write workdir/config.json.
    assert config.to_json()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_config_is_runnable(name):
    """The fields run_lib and the model factory read exist and hold valid values."""
    c = get(name.replace(".", "/"))
    assert c.training.sde in SDES
    assert isinstance(c.training.continuous, bool)
    assert c.model.name in MODELS
    assert c.sampling.method == "pc"
    assert c.sampling.predictor in PREDICTORS
    assert c.sampling.corrector in CORRECTORS
    assert c.data.source in DATA_SOURCES
    # run_lib asserts that every frequency is divisible by n_jitted_steps.
    n = c.training.n_jitted_steps
    for freq in ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
        assert c.training[freq] % n == 0, freq
    if c.model.name in ("ncsnpp", "ddpm"):
        assert c.data.image_size % 2 ** (len(c.model.ch_mult) - 1) == 0
    # Discrete training is only defined for VE (SMLD) and VP (DDPM).
    if not c.training.continuous:
        assert c.training.sde in ("vesde", "vpsde")
    # Hard-coded machine paths of the original are gone.
    assert c.data.get("tfrecords_path", "") == ""


# --------------------------------------------------------------------------------------------
# Paper values (facts §2.1 / §2.2).

# Short names for the fields the table below checks.
KEYS = {
    "sde": "training.sde",
    "cont": "training.continuous",
    "reduce_mean": "training.reduce_mean",
    "n_iters": "training.n_iters",
    "batch": "training.batch_size",
    "pred": "sampling.predictor",
    "corr": "sampling.corrector",
    "snr": "sampling.snr",
    "n_steps": "sampling.n_steps_each",
    "centered": "data.centered",
    "image_size": "data.image_size",
    "dataset": "data.dataset",
    "category": "data.category",
    "name": "model.name",
    "nf": "model.nf",
    "ch_mult": "model.ch_mult",
    "nrb": "model.num_res_blocks",
    "attn": "model.attn_resolutions",
    "fir": "model.fir",
    "prog_in": "model.progressive_input",
    "prog_out": "model.progressive",
    "resblock": "model.resblock_type",
    "emb": "model.embedding_type",
    "scale_by_sigma": "model.scale_by_sigma",
    "ema": "model.ema_rate",
    "sigma_min": "model.sigma_min",
    "sigma_max": "model.sigma_max",
    "N": "model.num_scales",
    "beta_min": "model.beta_min",
    "beta_max": "model.beta_max",
    "dropout": "model.dropout",
    "conditional": "model.conditional",
    "lr": "optim.lr",
    "warmup": "optim.warmup",
    "clip": "optim.grad_clip",
}

# Shared by every CIFAR-10 NCSN++ / DDPM++ / DDPM config.
_CIFAR = dict(
    batch=128, image_size=32, nf=128, attn=(16,), lr=2e-4, warmup=5000, clip=1.0, N=1000,
    sigma_min=0.01, sigma_max=50, beta_min=0.1, beta_max=20.0, dropout=0.1, n_steps=1,
    conditional=True,
)  # fmt: skip
_VE = dict(sde="vesde", reduce_mean=False, centered=False, scale_by_sigma=True, ema=0.999)
_VP_CONT = dict(cont=True, reduce_mean=True, centered=True, scale_by_sigma=False, ema=0.9999)
_NCSNPP = dict(name="ncsnpp", ch_mult=(1, 2, 2, 2), resblock="biggan", prog_out="none")
_DDPMPP = dict(_NCSNPP, fir=False, prog_in="none", emb="positional")
_NCSNPP_FIR = dict(_NCSNPP, fir=True, prog_in="residual")
_DDPM = dict(name="ddpm", ch_mult=(1, 2, 2, 2), nrb=2)
_RD_LANGEVIN = dict(pred="reverse_diffusion", corr="langevin", snr=0.16)
_EM = dict(pred="euler_maruyama", corr="none")

EXPECTED = {
    # --- CIFAR-10, Table 1-3 configs.
    "ve/cifar10_ncsnpp": {
        **_CIFAR, **_VE, **_NCSNPP_FIR, **_RD_LANGEVIN,
        "cont": False, "n_iters": 1300001, "nrb": 4, "emb": "positional",
    },
    "ve/cifar10_ncsnpp_continuous": {
        **_CIFAR, **_VE, **_NCSNPP_FIR, **_RD_LANGEVIN,
        "cont": True, "n_iters": 1300001, "nrb": 4, "emb": "fourier",
    },
    "ve/cifar10_ncsnpp_deep_continuous": {
        **_CIFAR, **_VE, **_NCSNPP_FIR, **_RD_LANGEVIN,
        "cont": True, "n_iters": 950001, "nrb": 8, "emb": "fourier",
    },
    "ve/cifar10_ddpm": {**_CIFAR, **_VE, **_DDPM, **_RD_LANGEVIN, "cont": False},
    "vp/cifar10_ddpmpp": {
        **_CIFAR, **_VP_CONT, **_DDPMPP, "sde": "vpsde", "cont": False,
        "pred": "ancestral_sampling", "corr": "none", "n_iters": 1300001, "nrb": 4,
    },
    "vp/cifar10_ddpmpp_continuous": {
        **_CIFAR, **_VP_CONT, **_DDPMPP, **_EM, "sde": "vpsde", "n_iters": 1300001, "nrb": 4,
    },
    "vp/cifar10_ddpmpp_deep_continuous": {
        **_CIFAR, **_VP_CONT, **_DDPMPP, **_EM, "sde": "vpsde", "n_iters": 950001, "nrb": 8,
    },
    "vp/cifar10_ncsnpp": {
        **_CIFAR, **_VP_CONT, **_NCSNPP_FIR, "sde": "vpsde", "cont": False,
        "pred": "reverse_diffusion", "corr": "none", "nrb": 4, "emb": "positional",
    },
    "vp/cifar10_ncsnpp_continuous": {
        **_CIFAR, **_VP_CONT, **_NCSNPP_FIR, **_EM, "sde": "vpsde", "nrb": 4,
        "emb": "positional",
    },
    "vp/cifar10_ncsnpp_deep_continuous": {
        **_CIFAR, **_VP_CONT, **_NCSNPP_FIR, **_EM, "sde": "vpsde", "nrb": 8,
        "n_iters": 950001, "emb": "positional",
    },
    "vp/ddpm/cifar10": {
        **_CIFAR, **_VP_CONT, **_DDPM, "sde": "vpsde", "cont": False,
        "pred": "ancestral_sampling", "corr": "none",
    },
    "vp/ddpm/cifar10_continuous": {**_CIFAR, **_VP_CONT, **_DDPM, **_EM, "sde": "vpsde"},
    "vp/ddpm/cifar10_unconditional": {
        **_CIFAR, **_VP_CONT, **_DDPM, "sde": "vpsde", "cont": False,
        "pred": "ancestral_sampling", "conditional": False,
    },
    "subvp/cifar10_ddpm_continuous": {**_CIFAR, **_VP_CONT, **_DDPM, **_EM, "sde": "subvpsde"},
    "subvp/cifar10_ddpmpp_continuous": {
        **_CIFAR, **_VP_CONT, **_DDPMPP, **_EM, "sde": "subvpsde", "nrb": 4, "n_iters": 1300001,
    },
    "subvp/cifar10_ddpmpp_deep_continuous": {
        **_CIFAR, **_VP_CONT, **_DDPMPP, **_EM, "sde": "subvpsde", "nrb": 8, "n_iters": 950001,
    },
    "subvp/cifar10_ncsnpp_continuous": {
        **_CIFAR, **_VP_CONT, **_NCSNPP_FIR, **_EM, "sde": "subvpsde", "nrb": 4,
        "emb": "positional",
    },
    "subvp/cifar10_ncsnpp_deep_continuous": {
        **_CIFAR, **_VP_CONT, **_NCSNPP_FIR, **_EM, "sde": "subvpsde", "nrb": 8,
        "n_iters": 950001, "emb": "positional",
    },
    # --- CelebA 64 px.
    "ve/celeba_ncsnpp": {
        **_VE, **_NCSNPP_FIR, "cont": False, "image_size": 64, "dataset": "CELEBA",
        "sigma_max": 90, "snr": 0.17, "nrb": 4, "emb": "positional", "N": 1000,
    },
    # --- LSUN / FFHQ / CelebA-HQ 256 px, NCSN++ cont.
    "ve/bedroom_ncsnpp_continuous": {
        **_VE, "cont": True, "dataset": "LSUN", "category": "bedroom", "image_size": 256,
        "sigma_max": 378, "N": 2000, "snr": 0.075, "batch": 64, "n_iters": 2400001,
        "ch_mult": (1, 1, 2, 2, 2, 2, 2), "nrb": 2, "prog_in": "input_skip",
        "prog_out": "output_skip", "emb": "fourier", "dropout": 0.0, "fir": True,
    },
    "ve/church_ncsnpp_continuous": {
        **_VE, "category": "church_outdoor", "sigma_max": 380, "N": 2000, "snr": 0.075,
        "ch_mult": (1, 1, 2, 2, 2, 2, 2), "nrb": 2, "prog_in": "input_skip",
    },
    "ve/ffhq_256_ncsnpp_continuous": {
        **_VE, "dataset": "FFHQ", "image_size": 256, "sigma_max": 348, "N": 2000, "snr": 0.075,
        "ch_mult": (1, 1, 2, 2, 2, 2, 2), "prog_out": "output_skip",
    },
    "ve/celebahq_256_ncsnpp_continuous": {
        **_VE, "dataset": "CelebAHQ", "image_size": 256, "sigma_max": 348, "N": 2000,
        "snr": 0.075, "ch_mult": (1, 1, 2, 2, 2, 2, 2),
    },
    # --- 1024 px (App. H.3: N=2000, snr 0.15).
    "ve/ffhq_ncsnpp_continuous": {
        "sde": "vesde", "cont": True, "reduce_mean": True, "dataset": "FFHQ", "image_size": 1024,
        "batch": 8, "n_iters": 2400001, "sigma_max": 1348, "sigma_min": 0.01, "N": 2000,
        "snr": 0.15, "nf": 16, "ch_mult": (1, 2, 4, 8, 16, 32, 32, 32), "nrb": 1,
        "prog_in": "input_skip", "prog_out": "output_skip", "emb": "fourier", "ema": 0.9999,
        "dropout": 0.0, "pred": "reverse_diffusion", "corr": "langevin", "lr": 2e-4,
    },
    "ve/celebahq_ncsnpp_continuous": {
        "sde": "vesde", "reduce_mean": False, "dataset": "CelebAHQ", "image_size": 1024,
        "batch": 8, "sigma_max": 1348, "N": 2000, "snr": 0.15, "nf": 16,
        "ch_mult": (1, 2, 4, 8, 16, 32, 32, 32), "nrb": 1, "ema": 0.9999,
    },
    # --- DDPM 256 px (lr 2e-5).
    "vp/ddpm/bedroom": {
        "sde": "vpsde", "cont": False, "category": "bedroom", "lr": 2e-5, "N": 1000,
        "ch_mult": (1, 1, 2, 2, 4, 4), "nrb": 2, "pred": "ancestral_sampling", "centered": True,
        "image_size": 256, "batch": 64,
    },
    "vp/ddpm/church": {"category": "church_outdoor", "lr": 2e-5, "N": 1000},
    "vp/ddpm/celebahq": {"dataset": "CelebAHQ", "lr": 2e-5, "N": 1000, "image_size": 256},
    # --- NCSNv2 (lr 1e-4, no warm-up, no clipping, annealed Langevin).
    "ve/ncsnv2/cifar10": {
        "sde": "vesde", "cont": False, "name": "ncsnv2_64", "N": 232, "sigma_max": 50,
        "snr": 0.176, "n_steps": 5, "pred": "none", "corr": "ald", "lr": 1e-4, "warmup": 0,
        "clip": -1.0, "ema": 0.999, "scale_by_sigma": True, "nf": 128, "image_size": 32,
    },
    "ve/ncsnv2/celeba": {
        "cont": False, "name": "ncsnv2_64", "N": 500, "sigma_max": 90, "snr": 0.128,
        "n_steps": 5, "lr": 1e-4, "warmup": 0, "clip": -1.0, "image_size": 64,
    },
    "ve/ncsnv2/bedroom": {
        "cont": False, "name": "ncsnv2_128", "N": 1086, "sigma_max": 190, "snr": 0.095,
        "n_steps": 3, "lr": 1e-4, "warmup": 0, "clip": -1, "ema": 0.9999, "image_size": 128,
        "batch": 128, "category": "bedroom",
    },
    # --- NCSN v1 (lr 1e-3).
    "ve/ncsn/cifar10": {
        "sde": "vesde", "cont": False, "name": "ncsn", "sigma_max": 1, "N": 10, "snr": 0.316,
        "n_steps": 100, "lr": 1e-3, "ema": 0.0, "scale_by_sigma": False,
    },
    "ve/ncsn/cifar10_5": {"sigma_max": 1, "N": 10, "snr": 0.316, "n_steps": 100, "ema": 0.999},
    "ve/ncsn/cifar10_124": {"sigma_max": 50, "N": 232, "snr": 0.176, "n_steps": 5, "ema": 0.0},
    "ve/ncsn/cifar10_1245": {"sigma_max": 50, "N": 232, "snr": 0.176, "n_steps": 5, "ema": 0.999},
    "ve/ncsn/celeba": {"sde": "vesde", "sigma_max": 1, "N": 10, "snr": 0.316, "lr": 1e-3},
    "ve/ncsn/celeba_5": {"sigma_max": 1, "N": 10, "snr": 0.316, "ema": 0.999},
    "ve/ncsn/celeba_124": {"sigma_max": 90, "N": 500, "snr": 0.128, "ema": 0.0},
    "ve/ncsn/celeba_1245": {"sigma_max": 90, "N": 500, "snr": 0.128, "ema": 0.999},
}  # fmt: skip

EXPECTED_CASES = [
    pytest.param(name, KEYS[short], value, id=f"{name}:{short}")
    for name, fields in EXPECTED.items()
    for short, value in fields.items()
]


@pytest.mark.parametrize("name,key,expected", EXPECTED_CASES)
def test_paper_value(name, key, expected):
    value = flat(get(name))[key]
    assert value == expected
    if isinstance(expected, (bool, str, tuple)):  # 1 == True and [1] != (1,): check the type too
        assert type(value) is type(expected), (value, expected)


def test_expected_table_covers_every_original_config():
    originals = {
        e.replace(".", "/")
        for e in EXPERIMENTS
        if not e.startswith(("testing.", "demo.", "tutorial."))
    }
    assert set(EXPECTED) == originals


# --------------------------------------------------------------------------------------------
# EMA rates: 0.999 for VE, 0.9999 for VP / sub-VP (paper App. H.2), except where the original
# configs differ.

EMA_EXCEPTIONS = {
    "ve/ffhq_ncsnpp_continuous": 0.9999,
    "ve/celebahq_ncsnpp_continuous": 0.9999,
    "ve/ncsnv2/bedroom": 0.9999,
    # NCSN v1 reproductions without NCSNv2 technique 5 (EMA).
    "ve/ncsn/cifar10": 0.0,
    "ve/ncsn/cifar10_124": 0.0,
    "ve/ncsn/celeba": 0.0,
    "ve/ncsn/celeba_124": 0.0,
    # Project demo: a 1500-step run needs a shorter EMA horizon.
    "demo/fashion_mnist_ddpmpp": 0.995,
    "tutorial/fashion_mnist_sigma25": 0.995,
    "tutorial/fashion_mnist_sigma50": 0.995,
}


@pytest.mark.parametrize("name", [e.replace(".", "/") for e in EXPERIMENTS])
def test_ema_rate(name):
    c = get(name)
    default = 0.999 if c.training.sde == "vesde" else 0.9999
    assert c.model.ema_rate == EMA_EXCEPTIONS.get(name, default)


# --------------------------------------------------------------------------------------------
# The original's config bugs, fixed.


def test_ncsn_celeba_sets_sde_not_loss():
    c = get("ve/ncsn/celeba")
    assert c.training.sde == "vesde"
    assert "loss" not in c.training


def test_ncsnv2_bedroom_is_discrete():
    c = get("ve/ncsnv2/bedroom")
    assert c.training.continuous is False
    assert "continuouse" not in c.training


NCSN_V1 = [e.replace(".", "/") for e in EXPERIMENTS if e.startswith("ve.ncsn.")]


@pytest.mark.parametrize("name", NCSN_V1)
def test_ncsn_v1_has_num_classes_tied_to_num_scales(name):
    c = get(name)
    assert c.model.num_classes == c.model.num_scales
    c.model.num_scales = 7  # a CLI override of N carries over to the label embedding
    assert c.model.num_classes == 7


@pytest.mark.parametrize("name", ["ve/ffhq_ncsnpp_continuous", "ve/celebahq_ncsnpp_continuous"])
def test_1024px_configs_have_jax_keys(name):
    c = get(name)
    default_keys = set(flat(get_default("ffhq")))
    assert default_keys <= set(flat(c))
    assert c.training.n_jitted_steps == 1
    assert c.eval.enable_loss and c.eval.enable_sampling and not c.eval.enable_bpd
    assert c.eval.bpd_dataset == "test"
    assert c.data.source == "tfrecords"


def test_unused_keys_dropped():
    assert "sigma_begin" not in get("ve/celeba_ncsnpp").model


@pytest.mark.parametrize("name", ["ve/ncsnv2/cifar10", "ve/ncsnv2/celeba", "ve/ncsnv2/bedroom"])
def test_ncsnv2_defaults_to_jax_architecture(name):
    c = get(name)
    assert c.model.torch_compat is False
    assert "channels" not in c.data  # our models read data.num_channels
    assert c.data.num_channels == 3


@pytest.mark.parametrize(
    "name",
    ["ve/ffhq_256_ncsnpp_continuous", "ve/celebahq_256_ncsnpp_continuous", "vp/ddpm/celebahq"],
)
def test_tfrecords_configs(name):
    c = get(name)
    assert c.data.tfrecords_path == ""
    assert c.data.source == "tfrecords"


# --------------------------------------------------------------------------------------------
# Defaults.

PROJECT_FIELDS = {
    "data.source": "tfds",
    "data.path": "",
    "data.data_dir": "",
    "data.manual_dir": "",
    "eval.inception_path": "",
    "eval.stats_path": "",
}


@pytest.mark.parametrize("dataset", ["cifar10", "celeba", "lsun", "ffhq"])
def test_default_project_fields(dataset):
    f = flat(get_default(dataset))
    expected = dict(PROJECT_FIELDS, **({"data.source": "tfrecords"} if dataset == "ffhq" else {}))
    for key, value in expected.items():
        assert f[key] == value, key
    assert "sampling.eps" not in f  # run_lib derives eps per SDE, as the original


@pytest.mark.parametrize("dataset", ["celeba", "lsun", "ffhq"])
def test_defaults_share_the_cifar10_key_tree(dataset):
    extra = {"data.tfrecords_path"} if dataset == "ffhq" else set()
    assert set(flat(get_default(dataset))) == set(flat(get_default("cifar10"))) | extra


@pytest.mark.parametrize(
    "dataset,diffs",
    [
        ("celeba", {"sampling.snr": 0.17, "eval.begin_ckpt": 1, "eval.enable_sampling": True,
                    "data.dataset": "CELEBA", "data.image_size": 64, "model.sigma_max": 90}),
        ("lsun", {"training.batch_size": 64, "training.n_iters": 2400001,
                  "training.snapshot_freq_for_preemption": 5000, "sampling.snr": 0.075,
                  "eval.begin_ckpt": 50, "eval.end_ckpt": 96, "eval.batch_size": 512,
                  "eval.enable_sampling": True, "data.dataset": "LSUN", "data.image_size": 256,
                  "model.sigma_max": 378, "model.num_scales": 2000, "model.dropout": 0.0}),
    ],
)  # fmt: skip
def test_default_differs_from_cifar10_exactly_as_original(dataset, diffs):
    base, other = flat(get_default("cifar10")), flat(get_default(dataset))
    changed = {k: v for k, v in other.items() if base[k] != v}
    assert changed == diffs


@pytest.mark.parametrize("module_name", DEFAULT_MODULES)
def test_every_default_field_has_a_comment_above(module_name):
    path = pathlib.Path(importlib.import_module(module_name).__file__)
    lines = path.read_text().splitlines()
    fields = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        is_field = re.match(r"[a-z_]+(\.[a-z_0-9]+)+ = ", stripped)
        if not is_field or "ConfigDict()" in stripped:
            continue
        fields += 1
        assert lines[i - 1].strip().startswith("#"), f"{path.name}:{i + 1}: {stripped}"
    assert fields > 40


# --------------------------------------------------------------------------------------------
# Tiny testing configs.

TINY = {
    "testing/ncsnpp_tiny": "ve/cifar10_ncsnpp_continuous",
    "testing/ddpmpp_tiny": "vp/cifar10_ddpmpp_continuous",
    "testing/ddpm_tiny": "vp/ddpm/cifar10",
    "testing/ncsnv2_tiny": "ve/ncsnv2/cifar10",
}
# The only keys a tiny config may change relative to its full counterpart.
SHRUNK_KEYS = {
    "training.batch_size", "training.n_iters", "training.snapshot_freq", "training.log_freq",
    "training.eval_freq", "training.snapshot_freq_for_preemption", "training.n_jitted_steps",
    "eval.begin_ckpt", "eval.end_ckpt", "eval.batch_size", "eval.num_samples",
    "data.image_size", "data.source", "model.num_scales", "model.nf", "model.ch_mult",
    "model.num_res_blocks", "model.attn_resolutions",
}  # fmt: skip


def test_tiny_table_covers_every_testing_config():
    assert set(TINY) == {e.replace(".", "/") for e in EXPERIMENTS if e.startswith("testing.")}
    assert "testing.dcgan_tiny" in ALL_EXPERIMENTS  # the GAN one is checked below


@pytest.mark.parametrize("tiny,full", TINY.items())
def test_tiny_config_has_full_key_tree(tiny, full):
    assert set(flat(get(tiny))) == set(flat(get(full)))


@pytest.mark.parametrize("tiny,full", TINY.items())
def test_tiny_config_only_shrinks(tiny, full):
    small, big = flat(get(tiny)), flat(get(full))
    changed = {k for k in small if small[k] != big[k]}
    assert changed <= SHRUNK_KEYS, changed - SHRUNK_KEYS
    assert {"training.batch_size", "model.num_scales", "data.image_size"} <= changed


@pytest.mark.parametrize("tiny", TINY)
def test_tiny_config_is_tiny(tiny):
    c = get(tiny)
    assert c.training.batch_size == c.eval.batch_size == 4
    # VP / sub-VP need beta_max / N < 1 for their DDPM tables.
    assert c.model.num_scales == (10 if c.training.sde == "vesde" else 25)
    assert c.model.beta_max / c.model.num_scales < 1 or c.training.sde == "vesde"
    assert c.data.image_size == 16
    assert c.training.n_iters <= 10
    assert c.eval.num_samples <= 16
    assert c.training.n_jitted_steps == 1
    assert c.model.nf == (32 if c.model.name == "ddpm" else 16)
    # Kept checkpoints exist for every index evaluate() waits for.
    last_ckpt = c.training.n_iters // c.training.snapshot_freq
    assert 1 <= c.eval.begin_ckpt <= c.eval.end_ckpt <= last_ckpt
    if "ch_mult" in c.model:
        assert c.model.ch_mult == (1, 2)
        assert c.model.num_res_blocks == 1
        assert c.model.attn_resolutions == (8,)


@pytest.mark.parametrize(
    "tiny,fields",
    [
        ("testing/ncsnpp_tiny", {"training.sde": "vesde", "training.continuous": True,
                                 "model.embedding_type": "fourier", "model.fir": True,
                                 "model.progressive_input": "residual",
                                 "model.name": "ncsnpp"}),
        ("testing/ddpmpp_tiny", {"training.sde": "vpsde", "training.continuous": True,
                                 "model.fir": False, "model.name": "ncsnpp"}),
        ("testing/ddpm_tiny", {"training.sde": "vpsde", "training.continuous": False,
                               "model.name": "ddpm"}),
        ("testing/ncsnv2_tiny", {"training.sde": "vesde", "training.continuous": False,
                                 "model.name": "ncsnv2_64", "model.torch_compat": False}),
    ],
)  # fmt: skip
def test_tiny_config_model_family(tiny, fields):
    f = flat(get(tiny))
    for key, value in fields.items():
        assert f[key] == value, key


def test_get_config_returns_fresh_objects():
    a, b = get("testing/ncsnpp_tiny"), get("testing/ncsnpp_tiny")
    a.model.nf = 99
    assert b.model.nf == 16
    assert get("ve/cifar10_ncsnpp_continuous").model.nf == 128


# --------------------------------------------------------------------------------------------
# DDLS: DCGAN configs (experiments.gan.train, experiments.ddls.run_ddls).

DCGAN = [
    "ddls/cifar10_dcgan",
    "ddls/fashion_mnist_dcgan",
    "testing/dcgan_tiny",
    "ddls/cifar10_dcgan_pretrained",
]


@pytest.mark.parametrize("name", DCGAN)
def test_dcgan_config_is_runnable(name):
    """The fields experiments.gan, models.dcgan and DDLS read exist and hold valid values."""
    from models import dcgan

    c = get(name)
    assert c.model.name == "dcgan"
    assert c.data.source in DATA_SOURCES and c.data.centered is True
    dcgan.num_upsamplings(c.data.image_size)  # a size the DCGAN supports
    assert c.data.num_channels in (1, 3)
    assert c.optim.lr == 2e-4 and c.optim.beta1 == 0.5  # Radford et al. 2015
    t = c.training
    assert t.snapshot_freq % t.snapshot_freq_for_preemption == 0
    assert t.n_iters % t.snapshot_freq == 0  # the last step is a kept snapshot
    d = c.ddls
    assert d.step_size > 0 and d.n_steps > 0 and 0 < d.decay <= 1 and d.decay_every >= 0
    assert 0 in d.record_steps and max(d.record_steps) <= d.n_steps
    assert 0 < d.batch_size <= d.num_samples
    assert c.eval.inception_path in ("", "none") and c.eval.feature_extractor_path == ""
    assert c.to_json()


@pytest.mark.parametrize(
    "name,fields",
    [
        ("ddls/cifar10_dcgan", {"data.dataset": "CIFAR10", "data.source": "tfds",
                                "data.image_size": 32, "data.num_channels": 3,
                                "model.z_dim": 100}),
        ("ddls/fashion_mnist_dcgan", {"data.dataset": "FashionMNIST", "data.source": "idx",
                                      "data.path": "/usr/share/datasets/fashion-mnist",
                                      "data.image_size": 28, "data.num_channels": 1,
                                      "data.random_flip": False, "model.z_dim": 100}),
    ],
)  # fmt: skip
def test_dcgan_config_values(name, fields):
    f = flat(get(name))
    for key, value in fields.items():
        assert f[key] == value, key


def test_dcgan_configs_share_one_key_tree_and_tiny_only_shrinks():
    trees = [set(flat(get(name))) for name in DCGAN]
    assert all(tree == trees[0] for tree in trees)
    small, big = flat(get("testing/dcgan_tiny")), flat(get("ddls/cifar10_dcgan"))
    changed = {k for k in small if small[k] != big[k]}
    assert {k.split(".")[0] for k in changed} <= {"training", "data", "model", "eval", "ddls"}
    assert small["training.batch_size"] % 8 == 0  # the 8 simulated test devices
    assert small["training.n_iters"] <= 10 and small["ddls.num_samples"] <= 16


def test_every_dcgan_default_field_has_a_comment_above():
    path = CONFIGS_DIR / "ddls" / "__init__.py"
    lines = path.read_text().splitlines()
    fields = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not re.match(r"[a-z_]+(\.[a-z_0-9]+)+ = ", stripped) or "ConfigDict()" in stripped:
            continue
        fields += 1
        assert lines[i - 1].strip().startswith("#"), f"{path.name}:{i + 1}: {stripped}"
    assert fields > 25

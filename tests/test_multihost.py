"""Multi-host runs equal single-host runs: two processes x 4 CPU devices (jax.distributed on
localhost, gloo collectives) against one process x 8 devices, the same global batch.

`--mode eval` (eval loss, bits/dim, sample rounds, offline fd / kid), one sweep cell and a
short DDLS chain give the same numbers and byte-identical samples; only process 0 writes; and
the processes agree on the resume state even when each has its own local workdir: process 0's
holds a finished sample round that process 1's lacks (without the agreement process 1 would
sample that round alone and the collectives would hang).
"""

import json
import os
import shutil
import subprocess
import sys

import cpu_env
import multiprocess_helpers
import numpy as np
import pytest
from test_run_lib import make_npz, tiny_config

import run_lib
from configs.testing import dcgan_tiny
from experiments import extractor, gan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCORE_CONFIG = """
import ml_collections
from configs.testing import ddpmpp_tiny


def get_config():
    config = ddpmpp_tiny.get_config()
    config.data.path = {data!r}
    config.data.image_size = 8
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = (8,)
    config.training.snapshot_sampling = False
    config.training.batch_size = 8
    config.eval.batch_size = 8
    config.eval.begin_ckpt = 2
    config.eval.end_ckpt = 2
    config.eval.enable_bpd = True
    config.eval.bpd_max_batches = 1
    config.eval.enable_sampling = True
    config.eval.num_samples = 16
    config.eval.inception_path = "none"
    config.eval.feature_extractor_path = {extractor!r}
    config.sweep = ml_collections.ConfigDict(dict(
        rows=("reverse_diffusion",), columns=("P25",), nfe=(), num_samples=8))
    return config
"""

GAN_CONFIG = """
from configs.testing import dcgan_tiny


def get_config():
    config = dcgan_tiny.get_config()
    config.data.path = {data!r}
    config.eval.feature_extractor_path = {extractor!r}
    return config
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained tiny score model, an offline extractor and the config files."""
    root = tmp_path_factory.mktemp("multihost")
    data = make_npz(root / "data.npz")
    arrays = np.load(data)
    extractor_dir = str(root / "extractor")
    extractor.train_feature_extractor(arrays["x_train"], arrays["y_train"], 10, extractor_dir,
                                      steps=5, batch_size=8, name="tiny")  # fmt: skip
    run_lib.train(tiny_config(data), str(root / "score"))
    for name, text in (("score_cfg.py", SCORE_CONFIG), ("gan_cfg.py", GAN_CONFIG)):
        (root / name).write_text(text.format(data=data, extractor=extractor_dir))
    return root


@pytest.fixture(scope="module")
def gan_setup(setup):
    """`setup` plus a trained tiny DCGAN in `gan/`."""
    gan_config = dcgan_tiny.get_config()
    gan_config.data.path = str(setup / "data.npz")
    gan.train(gan_config, str(setup / "gan"))
    return setup


def _cmd(config, mode, workdir, *extra):
    return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={config}",
            f"--mode={mode}", f"--workdir={workdir}", *extra]  # fmt: skip


def run_single(config, mode, workdir):
    done = subprocess.run(_cmd(config, mode, workdir), env=cpu_env.env(8), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def run_two(config, mode, workdirs):
    """Two processes x 4 devices; process i uses workdirs[i]."""
    return multiprocess_helpers.run_two_processes(
        lambda i, *flags: _cmd(config, mode, workdirs[i], *flags),
        multiprocess_helpers.env(4),
        port_base=21000,
    )


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    diffs = [abs(a[k] - b[k]) for k in a if isinstance(a[k], float)]
    return max(diffs, default=0.0)


def test_eval_two_processes_equal_one(setup):
    config = setup / "score_cfg.py"
    single = setup / "eval_single"
    shutil.copytree(setup / "score", single)
    run_single(config, "eval", single)
    s_dir = single / "eval" / "ckpt_2"
    # Process 0 and 1 get their own local copies; process 0's has round 0 done already.
    mine, other = setup / "eval_p0", setup / "eval_p1"
    for d in (mine, other):
        shutil.copytree(setup / "score", d)
    (mine / "eval" / "ckpt_2").mkdir(parents=True)
    shutil.copy(s_dir / "samples_0.npz", mine / "eval" / "ckpt_2" / "samples_0.npz")
    run_two(config, "eval", [mine, other])
    report = json.loads((mine / "eval" / "report_2.json").read_text())
    expected = json.loads((single / "eval" / "report_2.json").read_text())
    diff = _max_diff(report, expected)
    print(f"eval report max |2 processes - 1 process| = {diff:.3g}: {report}")
    assert {"eval_loss", "bpd", "fd_tiny", "kid_tiny"} <= set(report)
    assert diff <= 1e-5 * max(abs(v) for v in expected.values() if isinstance(v, float))
    for r in range(2):  # byte-identical samples
        a = np.load(mine / "eval" / "ckpt_2" / f"samples_{r}.npz")["samples"]
        np.testing.assert_array_equal(a, np.load(s_dir / f"samples_{r}.npz")["samples"])
    assert (mine / "eval" / "summary.md").read_text() == (
        single / "eval" / "summary.md"
    ).read_text()
    assert not (other / "eval" / "report_2.json").exists()  # only process 0 writes
    assert not list((other / "eval").glob("ckpt_2/*.npz"))


# The sweep and DDLS comparisons start three more processes each (about a minute on 2 cores):
# `make test-slow`, to keep the default suite within its budget.
@pytest.mark.slow
def test_sweep_cell_two_processes_equal_one(setup):
    config = setup / "score_cfg.py"
    single, multi = setup / "sweep_single", setup / "sweep_multi"
    for d in (single, multi):
        shutil.copytree(setup / "score", d)
    run_single(config, "sweep", single)
    run_two(config, "sweep", [multi, multi])
    (cell,) = sorted(p.name for p in (single / "sweep" / "cells").iterdir())
    a = json.loads((multi / "sweep" / "cells" / cell).read_text())
    b = json.loads((single / "sweep" / "cells" / cell).read_text())
    diff = _max_diff(a["metrics"], b["metrics"])
    print(f"sweep cell {cell}: max metric difference {diff:.3g}: {a['metrics']}")
    assert a["metrics"].keys() == {"fd_tiny", "kid_tiny"} and a["nfe"] == b["nfe"]
    assert diff <= 1e-5 * max(abs(v) for v in b["metrics"].values())
    png = cell.replace(".json", ".png")
    assert (multi / "sweep" / "grids" / png).read_bytes() == (
        single / "sweep" / "grids" / png
    ).read_bytes()


@pytest.mark.slow
def test_ddls_two_processes_equal_one(gan_setup):
    setup = gan_setup
    config = setup / "gan_cfg.py"
    single, multi = setup / "ddls_single", setup / "ddls_multi"
    for d in (single, multi):
        shutil.copytree(setup / "gan", d)
    run_single(config, "ddls", single)
    run_two(config, "ddls", [multi, multi])
    a = json.loads((multi / "ddls" / "summary.json").read_text())["rows"]
    b = json.loads((single / "ddls" / "summary.json").read_text())["rows"]
    diff = max(_max_diff(x, y) for x, y in zip(a, b, strict=True))
    print(f"DDLS rows max difference {diff:.3g}")
    assert diff <= 1e-4
    for step in (0, 3, 6):
        name = f"grid_step_{step}.npz"
        np.testing.assert_array_equal(np.load(multi / "ddls" / name)["samples"],
                                      np.load(single / "ddls" / name)["samples"])  # fmt: skip

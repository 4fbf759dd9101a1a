"""The sweep tool: grid enumeration and validation, shards, resume, outputs, real NFE, labels.

Real sweeps use the tiny DDPM++ (VP, continuous, N = 25) at 8x8 with a randomly initialised
checkpoint, 8 samples per cell, and FD / KID in the feature space of the offline extractor
trained for a few steps on random images (the project's real metric path, `training.sample_eval.sample_metrics`).
NFE and the labels passed to the network are checked with a counting stand-in network, so the
check is on what the sampler really evaluates, not on the nominal count.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

import losses
from configs.testing import ddpm_tiny, ddpmpp_tiny
from experiments import extractor as extractor_lib
from experiments import sweep, sweep_grid, sweep_report, sweep_spec
from models import utils as mutils
from training import checkpoints, score_model


def _with_sweep(config, **fields):
    config.sweep = ml_collections.ConfigDict(fields)
    return config


def _grid(config):
    spec = sweep_spec.get_sweep_spec(config)
    return sweep_grid.enumerate_cells(spec, sweep_grid.get_runs(config, "/tmp/unused", spec))


def _ve_config():
    config = ddpm_tiny.get_config()
    config.training.sde = "vesde"
    config.model.num_scales = 10
    return config


# --------------------------------------------------------------------------------------------
# Grid enumeration and validation (no sampling).
# --------------------------------------------------------------------------------------------


def test_default_grid_is_table1():
    cells = _grid(ddpmpp_tiny.get_config())
    ids = [c.cell_id for c in cells]
    rows = ("ancestral_sampling", "reverse_diffusion", "probability_flow")
    expected = [f"VP__{r}__{col}" for col in ("P1000", "P2000") for r in rows]
    expected += ["VP__corrector__C2000"] + [f"VP__{r}__PC1000" for r in rows]
    assert ids == expected  # C2000 is one cell, shared by the three rows
    by_id = {c.cell_id: dict(c.options) | {"N": c.num_scales} for c in cells}
    assert by_id["VP__probability_flow__P2000"] == {
        "predictor": "reverse_diffusion", "corrector": "none", "probability_flow": True,
        "n_steps_each": 1, "snr": 0.16, "N": 2000,
    }  # fmt: skip
    assert by_id["VP__corrector__C2000"]["predictor"] == "none"
    assert by_id["VP__corrector__C2000"]["n_steps_each"] == 2
    # The config samples without a corrector: the C / PC columns use the paper's Langevin.
    assert by_id["VP__ancestral_sampling__PC1000"]["corrector"] == "langevin"
    # sub-VP has no ancestral sampler: those cells are left out.
    config = ddpmpp_tiny.get_config()
    config.training.sde = "subvpsde"
    assert [c.cell_id for c in _grid(config)] == [
        i.replace("VP", "subVP") for i in expected if "ancestral" not in i
    ]


def test_custom_grid_and_cell_config():
    config = _with_sweep(
        _ve_config(),
        rows=("reverse_diffusion", "probability_flow"),
        columns=("P10", "P20", "C10", "PC10"),
        samplers=("ode", "dpm_solver:order=2:method=multistep", "heun", "pc:corrector=langevin"),
        nfe=(10, 20),
    )
    cells = _grid(config)
    assert len(cells) == 2 * 3 + 1 + 1 + 2 + 2 + 2
    by_id = {c.cell_id: c for c in cells}
    assert by_id["VE__ode__adaptive"].nfe_budget is None
    dpm = sweep.cell_config(config, by_id["VE__dpm_solver-order-2-method-multistep__nfe20"])
    assert (dpm.sampling.method, dpm.sampling.dpm_order, dpm.sampling.dpm_method) == (
        "dpm_solver", 2, "multistep",
    )  # fmt: skip
    assert dpm.sampling.steps == 20 and dpm.model.num_scales == 10  # training N untouched
    assert sweep.cell_config(config, by_id["VE__heun__nfe20"]).sampling.steps == 10  # 19 NFE
    # PC at a budget: predictor + 1 Langevin step = 2 evaluations per step.
    pc = sweep.cell_config(config, by_id["VE__pc-corrector-langevin__nfe20"])
    assert (pc.sampling.method, pc.sampling.predictor, pc.sampling.corrector) == (
        "pc", "ancestral_sampling", "langevin",
    )  # fmt: skip
    assert pc.model.num_scales == 10
    assert sweep.cell_config(config, by_id["VE__reverse_diffusion__PC10"]).model.num_scales == 10
    # VP: PC steps with beta_max / N >= 1 would be NaN (DDPM tables), so they are skipped.
    vp = _with_sweep(
        ddpmpp_tiny.get_config(),
        columns=("P10", "P25"),
        samplers=("pc:corrector=langevin", "pc"),  # the config's predictor: Euler-Maruyama
        nfe=(10, 60),
    )
    assert [c.column for c in _grid(vp)] == ["P25"] * 3 + ["nfe60", "nfe10", "nfe60"]


def test_extra_runs_and_cli_overrides():
    config = _with_sweep(
        ddpmpp_tiny.get_config(),
        columns=("P50",),
        rows=("reverse_diffusion",),
        runs=("NCSN++=configs/testing/ncsnpp_tiny.py:/tmp/ve_run",),
    )
    config.eval.feature_extractor_path = "/tmp/extractor"
    spec = sweep_spec.get_sweep_spec(config)
    runs = sweep_grid.get_runs(config, "/tmp/vp_run", spec)
    assert [(r.label, r.workdir, r.config.training.sde) for r in runs.values()] == [
        ("VP", "/tmp/vp_run", "vpsde"), ("NCSN++", "/tmp/ve_run", "vesde"),
    ]  # fmt: skip
    # Every run is scored with the main config's metric settings.
    assert runs["NCSN++"].config.eval.feature_extractor_path == "/tmp/extractor"
    ids = [c.cell_id for c in sweep_grid.enumerate_cells(spec, runs)]
    assert ids == ["VP__reverse_diffusion__P50", "NCSN++__reverse_diffusion__P50"]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("columns", ("P10", "X10"), r"Bad Table 1 column 'X10'.*P<N>.*C<N>.*PC<N>"),
        ("columns", ("P0",), r"Bad Table 1 column 'P0'"),
        ("columns", ("PC",), r"Bad Table 1 column 'PC'"),
        ("rows", ("euler",), r"Unknown config.sweep.rows entry 'euler'; valid: \['ancestral"),
        ("samplers", ("foo",), r"Unknown sampler 'foo'; valid: \['pc', 'ode', "),
        ("samplers", ("pc:bogus=1",), r"Unknown option of sampler 'pc': 'bogus'; valid: "),
        ("samplers", ("pc:predictor",), r"Bad sampler option 'predictor'.*option=value"),
        ("samplers", ("pc:predictor=foo",), r"'foo'; valid: \['euler_maruyama'"),
        ("samplers", ("dpm_solver:order=5",), r"dpm_solver:order 5; valid: \[1, 2, 3\]"),
        ("samplers", ("dpm_solver:method=x",), r"dpm_solver:method 'x'; valid: \['singlestep'"),
        ("metrics", ("fid", "lpips"), r"'lpips'; valid: \['fid', 'kid', 'is', 'fd', 'bpd'\]"),
        ("metrics", ("fd",), r"eval.feature_extractor_path"),
        ("runs", ("VP=configs/x.py",), r"Bad config.sweep.runs entry.*LABEL=config.py:workdir"),
        ("runs", ("X=configs/nope.py:/tmp/w",), r"configs/nope.py' does not exist"),
        ("runs", ("VP=configs/testing/ddpm_tiny.py:/tmp/w",), r"Duplicate run label 'VP'"),
        ("nfe_budgets", (10,), r"Unknown config.sweep fields \['nfe_budgets'\]; valid: "),
    ],
)
def test_bad_specs_raise_naming_the_value(field, value, message):
    config = _with_sweep(ddpmpp_tiny.get_config(), **{field: value})
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        _grid(config)


@pytest.mark.parametrize("shard", ["3/2", "a/b", "1", "-1/2", "0/0", "1/1"])
def test_bad_shard_raises(shard):
    with pytest.raises(ValueError, match=rf"Bad shard '{shard}'; the form is 'i/n'"):
        sweep_spec.parse_shard(shard)


def test_shards_partition_the_cells():
    cells = _grid(_with_sweep(_ve_config(), samplers=("ode", "ddim"), nfe=(10, 20, 50)))
    assert len(cells) == 14
    for n in (1, 2, 3, 5):
        parts = [
            sweep_grid.shard_cells(cells, *sweep_spec.parse_shard(f"{i}/{n}")) for i in range(n)
        ]
        ids = [c.cell_id for part in parts for c in part]
        assert sorted(ids) == sorted(c.cell_id for c in cells)  # union = all, disjoint
        assert len(set(ids)) == len(ids) == len(cells)


def test_shards_share_outputs(tmp_path, monkeypatch):
    """Two shards with a stand-in evaluator: each evaluates its own cells, outputs show all."""
    samplers = ("ddim", "heun", "ode")
    config = _with_sweep(_ve_config(), columns=("P10", "C10"), samplers=samplers, nfe=(10, 20))
    evaluated = []

    def fake_evaluate(ctx, cell, spec, out_dir):
        evaluated.append(cell.cell_id)
        # Heun's last step is Euler (one evaluation fewer); the ODE takes what it needs.
        nfe = {"heun": (cell.nfe_budget or 0) - 1, "ode": 137}.get(cell.row, None)
        steps = cell.num_scales and cell.num_scales * dict(cell.options)["n_steps_each"]
        nfe = float(nfe or cell.nfe_budget or steps)
        return {"cell_id": cell.cell_id, "run": cell.run, "group": cell.group, "row": cell.row,
                "column": cell.column, "nfe_budget": cell.nfe_budget, "nfe": nfe,
                "metrics": {"fid": 100.0 / nfe, "fd_cnn": 1.0}}  # fmt: skip

    monkeypatch.setattr(sweep, "load_run", lambda run, spec: None)
    monkeypatch.setattr(sweep, "evaluate_cell", fake_evaluate)
    first = sweep.run_sweep(config, str(tmp_path), shard="0/2")
    second = sweep.run_sweep(config, str(tmp_path), shard="1/2")
    cells = _grid(config)
    assert len(cells) == 3 + 1 + 2 + 2 + 1
    assert evaluated[: len(first)] == [c.cell_id for c in cells[0::2]]
    assert evaluated[len(first) :] == [c.cell_id for c in cells[1::2]]
    assert sorted(r["cell_id"] for r in second) == sorted(c.cell_id for c in cells)
    out = tmp_path / "sweep"
    table = (out / "table1.md").read_text().splitlines()
    assert "Metric: fid" in table[0]  # FID first, FD only without it
    # C10 = 5 levels x 2 Langevin steps on a discrete model with N = 10: queried 'linear'.
    assert table[2] == "| predictor | VE P10 | VE C10 [linear] |"
    assert table[4:7] == [f"| {r} | 10 | 10 |" for r in sweep_spec.ROW_TITLES.values()][:3]
    nfe_table = (out / "nfe_table.md").read_text().splitlines()
    assert nfe_table[2] == "| run | sampler | 10 | 20 | adaptive |"
    assert nfe_table[4:] == [
        "| VE | ddim | 10 | 5 | - |",
        "| VE | heun | 11.11 (nfe 9) | 5.263 (nfe 19) | - |",
        "| VE | ode | - | - | 0.7299 (nfe 137) |",
    ]
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(cells)
    assert (out / "quality_vs_nfe.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------
# Real NFE and the labels the network sees (counting stand-in network, no weights).
# --------------------------------------------------------------------------------------------


class CountingModel:
    """Stand-in network: output 0 (score 0); records the labels of every evaluation."""

    def __init__(self):
        self.labels = []

    def apply(self, variables, x, labels, train=False):
        del variables, train
        jax.debug.callback(lambda v: self.labels.append(np.asarray(v)), labels)
        return jnp.zeros_like(x)


def _run_cell(config, cell):
    model = CountingModel()
    fn = sweep.build_sampling_fn(config, cell, model, (2, 4, 4, 1))
    x, nfe = fn(jax.random.key(0), {})
    jax.block_until_ready(x)
    jax.effects_barrier()
    return int(nfe), model.labels


# C<N>: N corrector evaluations (N / 2 levels x 2 Langevin steps); PC<N>: N + N.
@pytest.mark.parametrize("column,nfe", [("C20", 20), ("C10", 10), ("PC20", 40)])
def test_recorded_nfe_is_the_real_count(column, nfe):
    config = _ve_config()  # VE N=10 has no beta_max / N limit
    run = sweep_grid.Run("VE", config, "/tmp/unused")
    cell = sweep_grid.table1_cell(run, "reverse_diffusion", column)
    count, labels = _run_cell(config, cell)
    assert count == len(labels) == nfe


def test_ode_nfe_is_the_diffrax_count():
    config = ddpm_tiny.get_config()
    cell = sweep_grid.nfe_cell(sweep_grid.Run("VP", config, "/tmp/unused"), "ode", None)
    count, labels = _run_cell(config, cell)
    assert count == len(labels) > 2


@pytest.mark.parametrize(
    "sampler,nfe",
    [("ddim", 10), ("heun", 9), ("dpm_solver:order=3:method=singlestep", 10)],  # budget 10
)
def test_fast_sampler_cells_record_the_real_nfe(sampler, nfe):
    config = ddpmpp_tiny.get_config()
    cell = sweep_grid.nfe_cell(sweep_grid.Run("VP", config, "/tmp/unused"), sampler, 10)
    count, labels = _run_cell(config, cell)
    assert count == len(labels) == nfe


def test_p2000_queries_a_discrete_model_with_its_training_labels():
    """Discrete DDPM trained with N = 25, sampled with N = 50: labels t (25 - 1), s(x, i/2)."""
    config = ddpm_tiny.get_config()  # continuous=False, N = 25
    run = sweep_grid.Run("VP", config, "/tmp/unused")
    cell = sweep_grid.table1_cell(run, "reverse_diffusion", "P50")
    assert cell.label_map == "linear"  # the Table 1 default
    assert sweep_grid.table1_cell(run, "reverse_diffusion", "P25").label_map == ""  # own N
    count, labels = _run_cell(config, cell)
    labels = np.stack(labels)[:, 0]  # one label per evaluation (all examples share t)
    assert count == len(labels) == 50
    np.testing.assert_allclose(labels.max(), 24.0, rtol=1e-6)  # with N = 50 it would be 49
    assert len(np.unique(labels)) == 50  # 50 interpolated levels between the 25 trained ones
    # VE discrete (N = 10 trained, 20 sampled), 'linear': fractional levels from sigma_max
    # (label 0) down to sigma_min (label 9), about half a level apart.
    config = _ve_config()
    cell = sweep_grid.table1_cell(
        sweep_grid.Run("VE", config, "/tmp/unused"), "reverse_diffusion", "P20"
    )
    labels = np.stack(_run_cell(config, cell)[1])[:, 0]
    assert labels.dtype.kind == "f" and len(np.unique(labels)) == 20
    np.testing.assert_allclose(np.diff(labels), 9 / 19, rtol=1e-4)
    np.testing.assert_allclose(labels[[0, -1]], [0, 9], atol=1e-3)
    # 'round' (Table 4): every trained index, each used twice, s(x, floor(i / 2)).
    config.sweep.label_map = "round"
    cell = sweep_grid.table1_cell(
        sweep_grid.Run("VE", config, "/tmp/unused"), "reverse_diffusion", "P20"
    )
    assert cell.label_map == "round"
    labels = np.stack(_run_cell(config, cell)[1])[:, 0]
    assert sorted(np.unique(labels)) == list(range(10))
    assert np.all(np.bincount(labels) == 2)


# --------------------------------------------------------------------------------------------
# A real sweep: checkpoint, sampling, offline FD / KID, resume, outputs.
# --------------------------------------------------------------------------------------------


class TinyScore(nn.Module):
    """A one-conv noise-conditional network: compiles in a second where the U-Net takes ~10 s.

    Everything else in the sweep is the real path (Orbax restore of EMA params, get_score_fn,
    samplers, offline metrics, files); `test_sweep_with_the_tiny_unet` runs the U-Net.
    """

    @nn.compact
    def __call__(self, x, labels, train=False):
        del train
        scale = 1.0 + 1e-3 * labels.astype(x.dtype)[:, None, None, None]
        return nn.Conv(x.shape[-1], (3, 3))(x) * scale


def _tiny_config(data_path, extractor_path):
    config = ddpmpp_tiny.get_config()
    config.data.path = data_path
    config.data.image_size = 8
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = (8,)
    config.eval.batch_size = 8  # divisible by the 8 simulated devices
    config.eval.inception_path = "none"
    config.eval.feature_extractor_path = extractor_path
    return _with_sweep(
        config,
        rows=("reverse_diffusion",),  # more rows: test_shards_share_outputs (cheap stand-in)
        columns=("P25", "C50", "PC25"),
        # Real NFE 10 and 20 (Euler-Maruyama: 1 per step); ODE cells are in the slow test.
        samplers=("pc:predictor=euler_maruyama:corrector=none",),
        nfe=(10, 20),
        num_samples=8,
        metrics=("fd", "kid"),
    )


def _save_checkpoint(config, model, workdir):
    tx = losses.get_optimizer(config)

    def init(key):
        state = score_model.create_train_state(config, model, tx, key)
        # Perturb the EMA params (the U-Net's output layer is zero-initialised: score 0).
        leaves, tree = jax.tree.flatten(state.ema_params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
        return state.replace(ema_params=jax.tree.unflatten(tree, noisy))

    state = jax.jit(init)(jax.random.key(0))  # eager init of the U-Net takes ~15 s on CPU
    manager = checkpoints.checkpoint_manager(str(workdir), config.training.snapshot_freq)
    checkpoints.save_checkpoint(manager, state)
    manager.close()


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory):
    """Random 8x8 data (.npz) and an offline feature extractor trained 2 steps on it."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 32)
    data_path = str(root / "data.npz")
    np.savez(data_path, x_train=images, y_train=labels, x_test=images[:16], y_test=labels[:16])
    extractor = str(root / "extractor")
    extractor_lib.train_feature_extractor(images, labels, 2, extractor, steps=2, batch_size=8)
    return _tiny_config(data_path, extractor)


def test_missing_checkpoint_names_the_directory(sweep_data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoints; train first: .*--mode train"):
        sweep.run_sweep(sweep_data, str(tmp_path / "empty"))
    assert not (tmp_path / "empty" / "checkpoints").exists()


def test_sweep_resumes_and_writes_outputs(sweep_data, tmp_path, monkeypatch):
    config, workdir = sweep_data, tmp_path / "work"
    monkeypatch.setattr(mutils, "get_model", lambda config: TinyScore())
    _save_checkpoint(config, TinyScore(), workdir)
    calls = []
    real_evaluate = sweep.evaluate_cell

    def interrupted(ctx, cell, spec, out_dir):
        calls.append(cell.cell_id)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_evaluate(ctx, cell, spec, out_dir)

    monkeypatch.setattr(sweep, "evaluate_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config, str(workdir))
    cells_dir = workdir / "sweep" / "cells"
    done = sorted(os.listdir(cells_dir))
    assert done == sorted(f"{c}.json" for c in calls[:2])
    mtimes = {n: os.stat(cells_dir / n).st_mtime_ns for n in done}

    calls.clear()
    monkeypatch.setattr(
        sweep, "evaluate_cell", lambda *a: calls.append(a[1].cell_id) or real_evaluate(*a)
    )
    records = sweep.run_sweep(config, str(workdir))
    assert len(calls) == 3 and len(records) == 5  # only the unfinished cells ran
    assert {n: os.stat(cells_dir / n).st_mtime_ns for n in done} == mtimes
    _check_outputs(workdir / "sweep", {r["cell_id"]: r for r in records}, config)


def _check_outputs(out, records, config):
    # Real NFE: P25 -> 25, C50 -> 25 levels x 2 Langevin steps, PC25 -> 25 + 25.
    expected = {"VP__reverse_diffusion__P25": 25, "VP__corrector__C50": 50,
                "VP__reverse_diffusion__PC25": 50}  # fmt: skip
    assert {k: records[k]["nfe"] for k in expected} == expected
    em = "VP__pc-predictor-euler_maruyama-corrector-none__nfe"
    assert (records[em + "10"]["nfe"], records[em + "20"]["nfe"]) == (10, 20)
    assert (records[em + "10"]["steps"], records[em + "20"]["steps"]) == (10, 20)
    for r in records.values():
        assert set(r["metrics"]) == {"fd_cnn", "kid_cnn"}
        assert all(np.isfinite(v) for v in r["metrics"].values())
        assert r["wall_s"] > 0 and r["images_per_s"] > 0 and r["num_samples"] == 8
        assert Image.open(out / "grids" / f"{r['cell_id']}.png").size == (32, 32)  # 3x3 of 8 px
    # Different samplers give different samples, hence different distances.
    assert len({r["metrics"]["fd_cnn"] for r in records.values()}) == 5
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("cell_id,run,sde,group,sampler,method,predictor,corrector")
    assert "fd_cnn,kid_cnn,n_repeats,wall_s" in csv_lines[0] and len(csv_lines) == 6
    table = (out / "table1.md").read_text().splitlines()
    assert "Metric: fd_cnn" in table[0]
    assert table[2:4] == ["| predictor | VP P25 | VP C50 | VP PC25 |", "|---|---|---|---|"]
    fd = {k: f"{r['metrics']['fd_cnn']:.4g}" for k, r in records.items()}
    assert table[4] == (f"| reverse diffusion | {fd['VP__reverse_diffusion__P25']} | "
                        f"{fd['VP__corrector__C50']} | {fd['VP__reverse_diffusion__PC25']} |")  # fmt: skip
    assert table[5] == "" and table[6].startswith("P<N>: predictor only")
    # The paper's Table 5 snr: VP C2000 0.27 (any C column), VP PC1000 reverse diffusion 0.01.
    assert table[-1] == ("snr of VP (source: paper = Table 5, sweep.snr = 'paper'): C50 0.27 "
                         "(paper); PC25 reverse diffusion 0.01 (paper).")  # fmt: skip
    assert records["VP__corrector__C50"]["snr"] == 0.27
    assert records["VP__reverse_diffusion__P25"]["snr"] is None  # no corrector
    nfe_table = (out / "nfe_table.md").read_text()
    sampler = "pc:predictor=euler_maruyama:corrector=none"
    assert f"| VP | {sampler} | {fd[em + '10']} | {fd[em + '20']} |" in nfe_table
    with Image.open(out / "quality_vs_nfe.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert not os.listdir(out / "work")  # finished cells leave no partial rounds


@pytest.mark.slow
def test_sweep_with_the_tiny_unet(sweep_data, tmp_path):
    """The tiny DDPM++ U-Net, with an ODE cell and its bits/dim (~10-20 s compile per cell)."""
    config = ml_collections.ConfigDict(sweep_data.to_dict())
    config.sweep.rows = ("reverse_diffusion",)
    config.sweep.columns = ("P25",)
    config.sweep.samplers = ("ode",)
    config.sweep.metrics = ("fd", "bpd")
    config.eval.bpd_max_batches = 1
    _save_checkpoint(config, mutils.get_model(config), tmp_path)
    records = {r["cell_id"]: r for r in sweep.run_sweep(config, str(tmp_path))}
    assert records["VP__reverse_diffusion__P25"]["nfe"] == 25
    assert set(records["VP__reverse_diffusion__P25"]["metrics"]) == {"fd_cnn"}
    ode = records["VP__ode__adaptive"]
    # Dopri5: 6 stages per step + 1 initial evaluation, + 1 for the denoising step.
    steps = (ode["nfe"] - 1 - config.sampling.noise_removal) / 6
    assert steps >= 2 and steps == int(steps)
    assert set(ode["metrics"]) == {"fd_cnn", "bpd"}
    assert all(np.isfinite(v) for r in records.values() for v in r["metrics"].values())


def test_sampler_budgets_override_the_global_nfe_list():
    config = ddpmpp_tiny.get_config()
    with config.unlocked():
        config.sweep = sweep_spec.default_sweep_config()
    config.sweep.rows, config.sweep.columns = (), ()
    config.sweep.nfe = (10, 20)
    config.sweep.samplers = ("ddim@30/40", "heun")
    spec = sweep_spec.get_sweep_spec(config)
    cells = sweep_grid.enumerate_cells(spec, {"VP": sweep_grid.Run("VP", config, "/tmp/unused")})
    assert [(c.row, c.column) for c in cells] == [
        ("ddim", "nfe30"), ("ddim", "nfe40"), ("heun", "nfe10"), ("heun", "nfe20"),
    ]  # fmt: skip
    table = sweep_report.nfe_markdown(spec, cells, {}, None)
    assert "| run | sampler | 10 | 20 | 30 | 40 |" in table
    for bad in ("ddim@", "ddim@0", "ddim@ten"):
        config.sweep.samplers = (bad,)
        with pytest.raises(ValueError, match="NFE budgets"):
            sweep_spec.get_sweep_spec(config)


def test_two_stage_predictor_cells_fit_the_nfe_budget():
    config = _ve_config()
    cell = sweep_grid.nfe_cell(
        sweep_grid.Run("VE", config, "/tmp/unused"), "pc:predictor=sra1:corrector=none", 20
    )
    assert cell.num_scales == 10  # 2 score evaluations per SRA1 step
    count, labels = _run_cell(config, cell)
    assert count == len(labels) == 20

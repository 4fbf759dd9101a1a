"""Table 1 the way the paper ran it: C<N> compute, Table 5 snr, repeats with mean ± std, the
label maps of P2000-style cells, and `config.sweep` in every default config (CLI overrides).

Paper wording (App. G, Tables 1, 4, 5; shared/reference/score_sde_facts.md section 8):
"C2000 uses 2 corrector steps per level"; "FID, mean ± std over 5 runs"; Table 5 snr
"VE C2000 0.22, VE PC1000 (anc / RD / PF) 0.17 / 0.16 / 0.17, VP C2000 0.27, VP PC1000
0.01 / 0.01 / 0.04"; "P2000 uses linear interpolation of noise scales, s'(x,i) = s(x, i/2)".
Grid tests only (no sampling), plus one sweep with a stand-in evaluator.
"""

import csv
import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

import configs
from configs import default_cifar10_configs
from configs.testing import ddpm_tiny, ddpmpp_tiny
from experiments import sweep, sweep_grid, sweep_report, sweep_spec

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _cells(config, workdir="/tmp/unused"):
    spec = sweep_spec.get_sweep_spec(config)
    return sweep_grid.enumerate_cells(spec, sweep_grid.get_runs(config, workdir, spec))


def _table1_config(sde="vpsde", **sweep_fields):
    """A discrete DDPM config trained with the paper's N = 1000 (no sampling happens here)."""
    config = ddpm_tiny.get_config()
    config.training.sde = sde
    config.model.num_scales = 1000
    for key, value in sweep_fields.items():
        config.sweep[key] = value
    return config


def _by_id(cells):
    return {c.cell_id: c for c in cells}


def test_c_columns_are_n_corrector_evaluations():
    """C2000 = 1000 levels x 2 Langevin steps; C1000 = 500 x 2 (a published reproduction's)."""
    cells = _by_id(_cells(_table1_config(columns=("C2000", "C1000", "PC1000", "P2000"))))
    c2000, c1000 = cells["VP__corrector__C2000"], cells["VP__corrector__C1000"]
    assert (c2000.num_scales, dict(c2000.options)["n_steps_each"]) == (1000, 2)
    assert (c1000.num_scales, dict(c1000.options)["n_steps_each"]) == (500, 2)
    assert dict(c2000.options)["predictor"] == "none"
    # C2000 runs the model's own 1000 levels; C1000 and P2000 need the label map.
    assert (c2000.label_map, c1000.label_map) == ("", "linear")
    assert cells["VP__reverse_diffusion__P2000"].label_map == "linear"
    assert cells["VP__reverse_diffusion__PC1000"].num_scales == 1000
    with pytest.raises(ValueError, match=r"'C25'.*N / 2 noise levels x 2 Langevin steps"):
        _cells(_table1_config(columns=("C25",)))


@pytest.mark.parametrize(
    "sde,expected",
    [
        ("vesde", {"corrector__C2000": 0.22, "ancestral_sampling__PC1000": 0.17,
                   "reverse_diffusion__PC1000": 0.16, "probability_flow__PC1000": 0.17}),
        ("vpsde", {"corrector__C2000": 0.27, "ancestral_sampling__PC1000": 0.01,
                   "reverse_diffusion__PC1000": 0.01, "probability_flow__PC1000": 0.04}),
    ],
)  # fmt: skip
def test_paper_snr_preset_is_table5(sde, expected):
    config = _table1_config(sde)
    label = sweep_spec.SDE_LABELS[sde]
    cells = _by_id(_cells(config))
    for cell_id, snr in expected.items():
        cell = cells[f"{label}__{cell_id}"]
        assert (dict(cell.options)["snr"], cell.snr_source) == (snr, "paper")
    assert cells[f"{label}__reverse_diffusion__P1000"].snr_source == ""  # no corrector
    # Scaled-down columns take the value of their kind: C200 that of C2000, PC100 of PC1000.
    config.sweep.columns = ("C200", "PC100")
    scaled = _by_id(_cells(config))
    for cell_id, snr in expected.items():
        cell_id = cell_id.replace("C2000", "C200").replace("PC1000", "PC100")
        assert dict(scaled[f"{label}__{cell_id}"].options)["snr"] == snr


def test_snr_modes_and_per_cell_overrides():
    config = _table1_config(
        "vesde",
        snr="config",
        snr_cells=("PC:probability_flow=0.3", "VE/C2000=0.25", "VP/PC1000=0.9"),
    )
    cells = _by_id(_cells(config))
    snr = {k: (dict(c.options)["snr"], c.snr_source) for k, c in cells.items() if c.snr_source}
    assert snr == {
        "VE__corrector__C2000": (0.25, "cell"),
        "VE__ancestral_sampling__PC1000": (0.16, "config"),  # config.sampling.snr
        "VE__reverse_diffusion__PC1000": (0.16, "config"),
        "VE__probability_flow__PC1000": (0.3, "cell"),  # VP/... does not apply to VE
    }
    config.sweep.snr, config.sweep.snr_cells = "0.2", ()
    assert {dict(c.options).get("snr") for c in _cells(config) if c.snr_source} == {0.2}
    # sub-VP: Table 5 has no values; the config's snr, said so.
    sub = ddpmpp_tiny.get_config()
    sub.training.sde = "subvpsde"
    assert {c.snr_source for c in _cells(sub) if c.snr_source} == {"config"}


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("snr", "best", r"Bad config.sweep.snr 'best'; valid: 'paper'"),
        ("snr", "-0.1", r"Bad config.sweep.snr '-0.1'"),
        ("snr_cells", ("PC1000=x",), r"Bad config.sweep.snr_cells entry 'PC1000=x'"),
        ("snr_cells", ("Q10=0.1",), r"Bad config.sweep.snr_cells entry 'Q10=0.1'"),
        ("snr_cells", ("PC:euler=0.1",), r"row of config.sweep.snr_cells entry 'euler'"),
        ("label_map", "nearest", r"config.sweep.label_map 'nearest'; valid: \['linear', 'round'"),
        ("repeats", 0, r"config.sweep.repeats must be >= 1, got 0"),
    ],
)
def test_bad_table1_fields_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        _cells(_table1_config(**{field: value}))


def test_label_map_choice_and_integer_label_models():
    config = _table1_config("vesde", label_map="round")
    assert _by_id(_cells(config))["VE__reverse_diffusion__P2000"].label_map == "round"
    config.sweep.label_map = "native"
    assert _by_id(_cells(config))["VE__reverse_diffusion__P2000"].label_map == "native"
    # NCSNv2 takes integer levels: 'linear' falls back to 'round'.
    config.model.name, config.sweep.label_map = "ncsnv2_64", "linear"
    assert _by_id(_cells(config))["VE__reverse_diffusion__P2000"].label_map == "round"
    # Continuous-time models are queried at t itself: no label map.
    assert {c.label_map for c in _cells(ddpmpp_tiny.get_config())} == {""}


def test_repeats_are_repeat_major_with_their_own_seeds():
    config = _table1_config("vesde", columns=("P10", "C10"), rows=("reverse_diffusion",), repeats=3)
    ids = [c.cell_id for c in _cells(config)]
    base = ["VE__reverse_diffusion__P10", "VE__corrector__C10"]
    assert ids == base + [f"{i}__r1" for i in base] + [f"{i}__r2" for i in base]
    assert [c.repeat for c in _cells(config)] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "values,text",
    [([3.2, 3.22, 3.24], "3.22 ± .02"), ([20.4, 20.5], "20.45 ± .07"), ([166.0, 170.0], "168.00 ± 2.83"),
     ([4.5], "4.5")],
)  # fmt: skip
def test_mean_std_in_the_papers_style(values, text):
    assert sweep_report.format_mean_std(values) == text


def test_sweep_with_repeats_resumes_and_aggregates(tmp_path, monkeypatch):
    """A stand-in evaluator: per-repeat cell files, 'mean ± std' tables, CSV rows of both."""
    config = _table1_config(
        "vesde", columns=("P10", "C10"), rows=("reverse_diffusion", "probability_flow"),
        repeats=2, metrics=(),
    )  # fmt: skip
    evaluated = []

    def fake_evaluate(ctx, cell, spec, out_dir):
        evaluated.append(cell.cell_id)
        fid = 10.0 + cell.repeat + (cell.row == "corrector")
        return {"cell_id": cell.cell_id, "run": cell.run, "group": cell.group, "row": cell.row,
                "column": cell.column, "nfe_budget": None, "nfe": 10.0, "repeat": cell.repeat,
                "seed": spec.seed + cell.repeat, "label_map": cell.label_map,
                "metrics": {"fid": fid}}  # fmt: skip

    monkeypatch.setattr(sweep, "load_run", lambda run, spec: None)
    monkeypatch.setattr(sweep, "evaluate_cell", fake_evaluate)
    # Shard 0/2 first (half the cells, so one repeat is partial), then everything.
    sweep.run_sweep(config, str(tmp_path), shard="0/2")
    table = (tmp_path / "sweep" / "table1.md").read_text().splitlines()
    # Shard 0 holds cells 0, 2, 4: RD P10 and C10 of repeat 0, PF P10 of repeat 1.
    assert table[4:6] == ["| reverse diffusion | 10 (n=1) | 11 (n=1) |",
                          "| probability flow | 11 (n=1) | 11 (n=1) |"]  # fmt: skip
    records = sweep.run_sweep(config, str(tmp_path))
    assert len(records) == len(evaluated) == 6  # 2 x (2 P10 rows + 1 C10); nothing re-run
    table = (tmp_path / "sweep" / "table1.md").read_text().splitlines()
    assert "mean ± std over 2 sampling runs" in table[0]
    # The model was trained with N = 1000: both columns query it through the label map.
    assert table[2] == "| predictor | VE P10 [linear] | VE C10 [linear] |"
    assert table[4:6] == [
        "| reverse diffusion | 10.50 ± .71 | 11.50 ± .71 |",
        "| probability flow | 10.50 ± .71 | 11.50 ± .71 |",
    ]
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["repeat"] for r in rows] == ["0", "1"] * 3 + ["mean"] * 3  # sorted by cell id
    means = {r["cell_id"]: r for r in rows if r["repeat"] == "mean"}
    assert means["VE__corrector__C10"]["fid"] == "11.5"
    assert float(means["VE__corrector__C10"]["fid_std"]) == pytest.approx(0.7071, abs=1e-4)
    assert means["VE__corrector__C10"]["n_repeats"] == "2"
    assert {r["label_map"] for r in rows} == {"linear"}


def test_every_default_config_has_the_sweep_fields():
    expected = configs.get_sweep_config().to_dict()
    assert default_cifar10_configs.get_default_configs().sweep.to_dict() == expected
    assert sweep_spec.default_sweep_config().to_dict() == expected
    assert ddpm_tiny.get_config().sweep.to_dict() == expected


def test_sweep_fields_override_from_the_command_line():
    """`main.py --mode sweep --config.sweep.columns=...` under lock_config (was KeyError)."""
    argv = [
        "main.py", f"--config={CONFIGS / 'testing' / 'ddpm_tiny.py'}",
        "--config.sweep.columns=('P100','P200','C200','PC100')", "--config.sweep.repeats=3",
        "--config.sweep.snr=0.2", "--config.sweep.label_map=round",
    ]  # fmt: skip
    values = flags.FlagValues()
    # The override flags are found in argv (sys.argv for main.py).
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    config = values.config
    assert config.sweep.columns == ("P100", "P200", "C200", "PC100")
    assert (config.sweep.repeats, config.sweep.snr, config.sweep.label_map) == (3, "0.2", "round")
    spec = sweep_spec.get_sweep_spec(ml_collections.ConfigDict(config.to_dict()))
    assert spec.repeats == 3 and sweep_spec.parse_snr(spec.snr) == 0.2


def test_a_grid_without_cells_says_why(tmp_path):
    # VP with N = 1000 training levels: C20 (10 levels) and P10 need N > beta_max = 20.
    config = _table1_config(columns=("P10", "C20"))
    with pytest.raises(ValueError, match=r"no cells .*N > model.beta_max"):
        sweep.run_sweep(config, str(tmp_path))

"""The sweep's grid: `config.sweep`, its parsing and validation, the runs and the cells.

A cell is (run, sampler, steps): a trained checkpoint (run) sampled with one sampler setting.
The grid comes from the optional `config.sweep` ConfigDict (fields and defaults in
`default_sweep_config`; without it, Table 1 of Song et al. 2021 for the config's SDE).
`experiments/sweep.py` evaluates the cells, `experiments/sweep_report.py` writes the tables.

References:
  Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"
  (arXiv:2011.13456), Table 1 and App. G; P2000 queries the model as `s'(x, i) = s(x, i / 2)`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any

import ml_collections
from absl import logging

import fileio
import sampling
from samplers import fast_samplers, schedules

# Table 1 rows: a predictor name, or 'probability_flow' (reverse diffusion on the flow ODE).
TABLE1_ROWS = ("ancestral_sampling", "reverse_diffusion", "probability_flow", "euler_maruyama")
# Table 1 columns: P = predictor only, C = corrector only, PC = predictor + corrector; N steps.
COLUMN_RE = re.compile(r"^(P|C|PC)(\d+)$")
SHARD_RE = re.compile(r"^(\d+)/(\d+)$")
# Metric names of `sweep.metrics` -> which result keys they keep (`kid` also keeps `kid_<name>`).
METRICS = {"fid": ("fid",), "kid": ("kid",), "is": ("inception_score",), "fd": (), "bpd": ("bpd",)}
SDE_LABELS = {"vesde": "VE", "vpsde": "VP", "subvpsde": "subVP"}
ROW_TITLES = {
    "ancestral_sampling": "ancestral sampling",
    "reverse_diffusion": "reverse diffusion",
    "probability_flow": "probability flow",
    "euler_maruyama": "Euler-Maruyama",
}
# Paper, Table 1 / App. G: C2000 runs 2 Langevin steps per noise level; PC one step.
C_STEPS_EACH = 2


# --------------------------------------------------------------------------------------------
# Grid specification.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerKind:
    """How a `config.sampling.method` is swept at an NFE budget.

    Attributes:
      options: option name in a sampler string -> `config.sampling` field it sets.
      choices: option name -> its valid values (options absent here take any value).
      evals_per_step: score evaluations per step (None: an adaptive solver, swept once).
      extra_evals: evaluations beyond `evals_per_step * steps` (steps are chosen so that the
        total stays within the budget).
    """

    options: dict[str, str]
    choices: dict[str, tuple] = dataclasses.field(default_factory=dict)
    evals_per_step: int | None = 1
    extra_evals: int = 0


def _same(*names: str) -> dict[str, str]:
    return {name: name for name in names}


# Extra samplers 'name[:option=value...]', fields as `sampling.get_sampling_fn` reads them. The
# cell records the NFE the sampler really used ('pc' steps use its predictor / corrector counts).
SAMPLERS = {
    "pc": SamplerKind(
        _same("predictor", "corrector", "snr", "n_steps_each", "probability_flow"),
        {"predictor": tuple(sampling.PREDICTORS), "corrector": tuple(sampling.CORRECTORS)},
    ),
    "ode": SamplerKind(_same("rtol", "atol"), evals_per_step=None),
    "adaptive": SamplerKind(_same("reltol", "abstol", "h_init"), evals_per_step=None),
    # DPM-Solver's `steps` is its NFE budget, singlestep or multistep.
    "dpm_solver": SamplerKind(
        {"order": "dpm_order", "method": "dpm_method", "algorithm": "dpm_algorithm"}
        | {"skip_type": "skip_type", "denoise": "fast_denoise", "thresholding": "dpm_thresholding"},
        {
            "order": (1, 2, 3),
            "method": fast_samplers.METHODS,
            "algorithm": fast_samplers.ALGORITHMS,
            "skip_type": schedules.SKIP_TYPES,
            "thresholding": (True, False),
        },
    ),
    "ddim": SamplerKind({"denoise": "fast_denoise"}),
    # EDM's Heun: 2 evaluations per step, Euler on the last one: 2 steps - 1.
    "heun": SamplerKind({"denoise": "fast_denoise"}, evals_per_step=2, extra_evals=-1),
}


def default_sweep_config() -> ml_collections.ConfigDict:
    """The fields of `config.sweep` and their defaults (the paper's Table 1)."""
    s = ml_collections.ConfigDict()
    # Table 1 rows: predictor names, or 'probability_flow' (reverse diffusion on the flow ODE).
    s.rows = ("ancestral_sampling", "reverse_diffusion", "probability_flow")
    # Table 1 columns (P|C|PC)<N>: predictor only / corrector only, 2 steps per level /
    # predictor + 1 corrector step; N steps. Corrector and snr from config.sampling.
    s.columns = ("P1000", "P2000", "C2000", "PC1000")
    # Extra samplers 'name[:option=value...][@N1/N2...]' (names in SAMPLERS), one cell per NFE
    # budget: the sampler's own '@' budgets, else `nfe`.
    s.samplers = ()
    # NFE budgets of the extra samplers (adaptive solvers run once, at their own NFE).
    s.nfe = (10, 20, 50, 100, 1000)
    # Extra runs 'LABEL=config.py:workdir', swept besides the current config and workdir.
    s.runs = ()
    # Label of the current run; '' = its SDE ('VE', 'VP', 'subVP').
    s.label = ""
    # Checkpoint index k = step / training.snapshot_freq (as eval.begin_ckpt); -1 = latest.
    s.ckpt = -1
    # Samples per cell; -1 = eval.num_samples.
    s.num_samples = -1
    # Global sampling batch size (a multiple of the device count); -1 = eval.batch_size.
    s.batch_size = -1
    # Subset of 'fid', 'kid', 'is', 'fd', 'bpd' (bpd on 'ode' cells only); () = all that
    # config.eval enables (Inception unless eval.inception_path='none'; FD with an extractor).
    s.metrics = ()
    # Seed of the sample keys (every cell starts from the same prior noise); -1 = config.seed.
    s.seed = -1
    return s


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """`config.sweep` resolved against `default_sweep_config`, validated."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    samplers: tuple[str, ...]
    nfe: tuple[int, ...]
    runs: tuple[str, ...]
    label: str
    ckpt: int
    num_samples: int
    batch_size: int
    metrics: tuple[str, ...]
    seed: int


def get_sweep_spec(config) -> SweepSpec:
    """Reads `config.sweep` (missing fields take their defaults) and checks every value."""
    values = default_sweep_config().to_dict()
    user = config.get("sweep")
    if user is not None:
        unknown = sorted(set(user.keys()) - set(values))
        if unknown:
            raise ValueError(f"Unknown config.sweep fields {unknown}; valid: {sorted(values)}")
        values.update(user.to_dict())
    for name in ("rows", "columns", "samplers", "runs", "metrics"):
        values[name] = tuple(str(v) for v in values[name])
    values["nfe"] = tuple(int(v) for v in values["nfe"])
    for name, default in (
        ("num_samples", config.eval.num_samples),
        ("batch_size", config.eval.batch_size),
        ("seed", config.seed),
    ):
        values[name] = int(default if values[name] == -1 else values[name])  # fmt: skip
    spec = SweepSpec(**values)
    for row in spec.rows:
        _check_choice("config.sweep.rows entry", row, TABLE1_ROWS)
    for column in spec.columns:
        parse_column(column)
    for sampler in spec.samplers:
        parse_sampler(sampler)
    for metric in spec.metrics:
        _check_choice("config.sweep.metrics entry", metric, tuple(METRICS))
    if any(b < 1 for b in spec.nfe) or spec.num_samples < 1 or spec.batch_size < 1:
        raise ValueError("config.sweep.nfe, num_samples and batch_size must be positive")
    _check_metric_sources(config, spec.metrics)
    return spec


def _check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid: {list(valid)}")


def _check_metric_sources(config, metrics) -> None:
    """Requested metrics must have their feature network configured."""
    offline = bool(config.eval.get("feature_extractor_path", ""))
    inception = {"fid", "is"} | (set() if offline else {"kid"})
    if set(metrics) & inception and config.eval.inception_path.lower() == "none":
        raise ValueError(
            f"metrics {sorted(set(metrics) & inception)} need Inception but "
            "eval.inception_path is 'none'; use 'fd' / 'kid' with eval.feature_extractor_path, "
            "or set eval.inception_path"
        )
    if "fd" in metrics and not offline:
        raise ValueError(
            "metric 'fd' needs an offline feature extractor: set eval.feature_extractor_path "
            "(train one with `python -m evaluation --train_extractor ...`)"
        )


def parse_column(column: str) -> tuple[str, int]:
    """'PC1000' -> ('PC', 1000); raises on anything but (P|C|PC)<N>, N >= 1."""
    match = COLUMN_RE.match(str(column))
    if match is None or int(match.group(2)) < 1:
        raise ValueError(
            f"Bad Table 1 column {column!r}; valid forms: P<N> (predictor only), C<N> "
            "(corrector only), PC<N> (predictor + corrector), N >= 1, e.g. 'P1000', 'PC1000'"
        )
    return match.group(1), int(match.group(2))


def _parse_value(text: str):
    """Option values: true/false, int, float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def split_budgets(text: str) -> tuple[str, tuple[int, ...] | None]:
    """'heun@10/20' -> ('heun', (10, 20)): a sampler's own NFE budgets (else `sweep.nfe`)."""
    text, sep, budgets = str(text).partition("@")
    if not sep:
        return text, None
    try:
        values = tuple(int(b) for b in budgets.split("/"))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(
            f"Bad NFE budgets {budgets!r} in sampler {text + sep + budgets!r}; the form is "
            "'name[:option=value...]@N1/N2/...' with positive integers, e.g. 'heun@10/20/50'"
        )
    return text, values


def parse_sampler(text: str) -> tuple[str, dict[str, Any]]:
    """'dpm_solver:order=2:method=multistep' -> ('dpm_solver', {'order': 2, ...}).

    A suffix '@10/20' (the sampler's own NFE budgets) is allowed and ignored here.
    """
    name, *parts = split_budgets(text)[0].split(":")
    _check_choice("sampler", name, tuple(SAMPLERS))
    kind, options = SAMPLERS[name], {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise ValueError(
                f"Bad sampler option {part!r} in {text!r}; the form is "
                f"'{name}:option=value[:option=value]', options: {sorted(kind.options)}"
            )
        _check_choice(f"option of sampler {name!r}:", key, tuple(kind.options))
        options[key] = _parse_value(value)
        if key in kind.choices:
            _check_choice(f"value of {name}:{key}", options[key], kind.choices[key])
    return name, options


def parse_shard(shard: str) -> tuple[int, int]:
    """'1/4' -> (1, 4); raises unless 0 <= i < n."""
    match = SHARD_RE.match(str(shard).strip())
    if match is None or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"Bad shard {shard!r}; the form is 'i/n' with 0 <= i < n, e.g. '0/4'")
    return int(match.group(1)), int(match.group(2))


# --------------------------------------------------------------------------------------------
# Runs and cells.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A trained model to sweep: its label, config and workdir."""

    label: str
    config: Any
    workdir: str


def _load_config_file(path: str):
    if not (path.endswith(".py") and os.path.isfile(path)):
        raise FileNotFoundError(f"Run config file {path!r} does not exist (expected a .py file)")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()


def _run_config(path: str, main_config):
    """A run's own config; eval.* and the data location come from the main config, so that
    every run is scored against the same reference data and feature networks."""
    config = ml_collections.ConfigDict(_load_config_file(path).to_dict())
    config.eval = ml_collections.ConfigDict(main_config.eval.to_dict())
    for field in ("source", "path", "data_dir"):
        if field in main_config.data:
            config.data[field] = main_config.data[field]
    return config


def get_runs(config, workdir: str, spec: SweepSpec) -> dict[str, Run]:
    """The current config and workdir first, then `sweep.runs` ('LABEL=config.py:workdir')."""
    label = spec.label or SDE_LABELS.get(config.training.sde.lower(), config.training.sde)
    runs = {label: Run(label, config, fileio.absolute(workdir))}
    for text in spec.runs:
        label, sep, rest = text.partition("=")
        path, sep2, run_workdir = rest.partition(":")
        if not (sep and sep2 and label and path and run_workdir):
            raise ValueError(
                f"Bad config.sweep.runs entry {text!r}; the form is 'LABEL=config.py:workdir'"
            )
        if label in runs:
            raise ValueError(f"Duplicate run label {label!r} in config.sweep (labels: {[*runs]})")
        runs[label] = Run(label, _run_config(path, config), fileio.absolute(run_workdir))
    return runs


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (run, sampler, steps) point of the grid.

    Attributes:
      run: run label. group: 'table1' or 'nfe'.
      row: Table 1 row ('corrector' for the shared C columns) or the sampler string.
      column: 'P1000'-style Table 1 column, or 'nfe<B>' / 'adaptive'.
      method: `config.sampling.method`. options: `config.sampling` fields to set.
      num_scales: N of the sampling SDE for PC cells (None: the training N).
      nfe_budget: the NFE budget of an 'nfe' cell.
    """

    run: str
    group: str
    row: str
    column: str
    method: str
    options: tuple[tuple[str, Any], ...]
    num_scales: int | None = None
    nfe_budget: int | None = None

    @property
    def cell_id(self) -> str:
        """Stable file-name slug of (run, sampler, steps)."""
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{self.run}__{self.row}__{self.column}")


def _ddpm_ok(config, options: dict, n: int) -> bool:
    """VP / sub-VP DDPM tables (used by these predictors / correctors) need beta_max / N < 1."""
    uses_tables = options.get("predictor") in ("reverse_diffusion", "ancestral_sampling") or (
        options.get("corrector") in ("langevin", "ald")
    )
    vp = config.training.sde.lower() in ("vpsde", "subvpsde")
    return not (vp and uses_tables and config.model.beta_max / n >= 1.0)


def _pc_options(config, predictor: str, corrector: str, n_steps: int, flow: bool) -> dict:
    return {
        "predictor": predictor,
        "corrector": corrector,
        "n_steps_each": n_steps,
        "probability_flow": flow,
        "snr": float(config.sampling.snr),
    }


def table1_cell(run: Run, row: str, column: str) -> Cell | None:
    """The Table 1 cell (row, column) of a run; None when the sampler does not apply."""
    kind, n = parse_column(column)
    config = run.config
    # Corrector of the config; Langevin (the paper's) when the config samples without one.
    corrector = config.sampling.get("corrector", "none")
    corrector = "langevin" if corrector == "none" else corrector
    predictor = "reverse_diffusion" if row == "probability_flow" else row
    flow = row == "probability_flow"
    if kind == "C":  # Shared by every row, as in the paper's table.
        row, options = "corrector", _pc_options(config, "none", corrector, C_STEPS_EACH, False)
    elif kind == "P":
        options = _pc_options(config, predictor, "none", 1, flow)
    else:
        options = _pc_options(config, predictor, corrector, 1, flow)
    sde = config.training.sde.lower()
    if predictor == "ancestral_sampling" and kind != "C" and sde == "subvpsde":
        logging.info(
            "Skipping %s %s %s: ancestral sampling has no sub-VP form.", run.label, row, column
        )
        return None
    if not _ddpm_ok(config, options, n):
        logging.warning("Skipping %s %s %s: needs beta_max / N < 1.", run.label, row, column)
        return None
    return Cell(run.label, "table1", row, column, "pc", tuple(sorted(options.items())), n)


def _pc_budget_options(run: Run, text: str, options: dict) -> tuple[dict, int]:
    """A 'pc' sampler's options (defaults: the config's sampler) and its NFE per step."""
    config = run.config
    flow = bool(options.get("probability_flow", False))
    defaults = _pc_options(config, config.sampling.predictor, config.sampling.corrector, 1, flow)
    options = defaults | options
    if options["predictor"] == "ancestral_sampling" and config.training.sde.lower() == "subvpsde":
        raise ValueError(f"Sampler {text!r}: ancestral sampling has no sub-VP form")
    corrector_evals = (options["corrector"] != "none") * int(options["n_steps_each"])
    # Two-stage predictors (sra1, stochastic_heun) evaluate the score twice per step.
    evals = sampling.PREDICTOR_NFE.get(options["predictor"], 1) + corrector_evals
    if evals == 0:
        raise ValueError(f"Sampler {text!r} has neither a predictor nor a corrector")
    return options, evals


def nfe_cell(run: Run, text: str, budget: int | None) -> Cell | None:
    """The cell of extra sampler `text` at NFE `budget` (None for adaptive solvers)."""
    name, parsed = parse_sampler(text)
    kind = SAMPLERS[name]
    options = {kind.options[k]: v for k, v in parsed.items()}
    if kind.evals_per_step is None:
        return Cell(run.label, "nfe", text, "adaptive", name, tuple(sorted(options.items())))
    if name == "pc":
        options, evals = _pc_budget_options(run, text, options)
    else:
        evals = kind.evals_per_step
    n = (budget - kind.extra_evals) // evals
    if n < 1 or (name == "pc" and not _ddpm_ok(run.config, options, n)):
        logging.warning(
            "Skipping %s %s at NFE %d: %d steps are too few.", run.label, text, budget, n
        )
        return None
    # PC samplers take N from the sampling SDE (model.num_scales); the others from `steps`.
    num_scales = n if name == "pc" else None
    if name != "pc":
        options["steps"] = n
    items = tuple(sorted(options.items()))
    return Cell(run.label, "nfe", text, f"nfe{budget}", name, items, num_scales, budget)


def enumerate_cells(spec: SweepSpec, runs: dict[str, Run]) -> list[Cell]:
    """Every cell, in a stable order: per run, Table 1 (column-major), then extra samplers."""
    cells = []
    for run in runs.values():
        for column in spec.columns:
            kind, _ = parse_column(column)
            for row in spec.rows[:1] if kind == "C" else spec.rows:
                cells.append(table1_cell(run, row, column))
        for text in spec.samplers:
            text, budgets = split_budgets(text)
            adaptive = SAMPLERS[parse_sampler(text)[0]].evals_per_step is None
            for budget in (None,) if adaptive else budgets or spec.nfe:
                cells.append(nfe_cell(run, text, budget))
    return [c for c in cells if c is not None]


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Cells with position % count == index."""
    return [c for k, c in enumerate(cells) if k % count == index]

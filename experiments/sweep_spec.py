"""The sweep's specification: `config.sweep` parsed and validated, and its vocabulary.

`config.sweep`'s fields and defaults live in `configs.get_sweep_config` (every default config
adds them). `get_sweep_spec(config)` checks every value and returns a `SweepSpec`; the parsers
of its strings (Table 1 columns, extra samplers, snr overrides, shards) are public for the
command line and the tests. `experiments/sweep_grid.py` turns a spec into cells.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import ml_collections

import configs
import sampling
from models import utils as mutils
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
# Paper, Table 5: the snr of the Langevin corrector per (SDE, column kind[, row]).
PAPER_SNR = {
    ("vesde", "C"): 0.22,
    ("vesde", "PC", "ancestral_sampling"): 0.17,
    ("vesde", "PC", "reverse_diffusion"): 0.16,
    ("vesde", "PC", "probability_flow"): 0.17,
    ("vpsde", "C"): 0.27,
    ("vpsde", "PC", "ancestral_sampling"): 0.01,
    ("vpsde", "PC", "reverse_diffusion"): 0.01,
    ("vpsde", "PC", "probability_flow"): 0.04,
}
# `sweep.label_map` values: the two of `models.utils.get_score_fn`, or the original's labels.
LABEL_MAPS = (*mutils.LABEL_MAPS, "native")
# Networks that take integer noise levels only ('linear' falls back to 'round' for them).
INT_LABEL_MODELS = ("ncsn", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256")
SNR_CELL_RE = re.compile(r"^(?:([^/=]+)/)?(P|C|PC|(?:P|C|PC)\d+)(?::([a-z_]+))?=(.+)$")


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
    """The fields of `config.sweep` and their defaults (`configs.get_sweep_config`)."""
    return configs.get_sweep_config()


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """`config.sweep` resolved against `default_sweep_config`, validated."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    snr: str
    snr_cells: tuple[str, ...]
    label_map: str
    repeats: int
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
    for name in ("rows", "columns", "snr_cells", "samplers", "runs", "metrics"):
        values[name] = tuple(str(v) for v in values[name])
    values["nfe"] = tuple(int(v) for v in values["nfe"])
    values["snr"], values["label_map"] = str(values["snr"]), str(values["label_map"])
    values["repeats"] = int(values["repeats"])
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
    parse_snr(spec.snr)
    for text in spec.snr_cells:
        parse_snr_cell(text)
    _check_choice("config.sweep.label_map", spec.label_map, LABEL_MAPS)
    if spec.repeats < 1:
        raise ValueError(f"config.sweep.repeats must be >= 1, got {spec.repeats}")
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
    """'PC1000' -> ('PC', 1000); raises on anything but (P|C|PC)<N>, N >= 1 (C: N even)."""
    match = COLUMN_RE.match(str(column))
    if match is None or int(match.group(2)) < 1:
        raise ValueError(
            f"Bad Table 1 column {column!r}; valid forms: P<N> (predictor only), C<N> "
            "(corrector only), PC<N> (predictor + corrector), N >= 1, e.g. 'P1000', 'PC1000'"
        )
    if match.group(1) == "C" and int(match.group(2)) % 2:
        raise ValueError(
            f"Bad Table 1 column {column!r}: C<N> is N corrector evaluations, N / 2 noise "
            "levels x 2 Langevin steps (paper, App. G), so N must be even, e.g. 'C2000'"
        )
    return match.group(1), int(match.group(2))


def parse_snr(text: str) -> float | None:
    """`sweep.snr`: 'paper' -> None (Table 5 per cell), 'config' -> -1.0, '0.16' -> 0.16."""
    if text in ("paper", "config"):
        return None if text == "paper" else -1.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"Bad config.sweep.snr {text!r}; valid: 'paper' (Table 5 per cell), 'config' "
            "(config.sampling.snr) or a positive number such as '0.16'"
        )
    return value


def parse_snr_cell(text: str) -> tuple[str | None, str, str | None, float]:
    """'VP/PC:probability_flow=0.2' -> ('VP', 'PC', 'probability_flow', 0.2)."""
    match = SNR_CELL_RE.match(str(text).strip())
    value = None
    if match is not None:
        try:
            value = float(match.group(4))
        except ValueError:
            pass
    if value is None or not value > 0:
        raise ValueError(
            f"Bad config.sweep.snr_cells entry {text!r}; the form is "
            "'[RUN/]COLUMN[:ROW]=snr' with COLUMN a column ('PC1000') or a kind ('PC', 'C'), "
            "e.g. 'PC:probability_flow=0.2' or 'VE/C2000=0.3'"
        )
    if match.group(3) is not None:
        _check_choice("row of config.sweep.snr_cells entry", match.group(3), TABLE1_ROWS)
    return match.group(1), match.group(2), match.group(3), value


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

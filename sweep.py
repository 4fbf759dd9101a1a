"""Command line of the sampler sweeps (Table 1, quality vs NFE): `experiments/sweep.py`.

    python sweep.py --config configs/vp/ddpm/cifar10.py --workdir W [--shard i/n] \
        [--sweep.samplers="('ode', 'ddim')" --sweep.num_samples=10000 ...]

is `python main.py --config CFG --workdir W --mode sweep --config.sweep.<field>=...`: the
`--sweep.<field>` flags are the config's `sweep` fields (`experiments.sweep_spec.
default_sweep_config`; every config of configs/ has them), and the run goes through main.py's
checks, so a mistake is one line on stderr (--verbose: the traceback).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

import cli_checks  # noqa: E402 - light: no JAX / TensorFlow
import main  # noqa: E402 - defines the flags; the heavy imports happen in main.run

SWEEP_PREFIXES = ("--sweep.", "-sweep.")


def main_argv(argv: list[str]) -> list[str]:
    """`sweep.py` arguments as main.py's: `--mode=sweep` and `--sweep.x` -> `--config.sweep.x`."""
    out = [argv[0], "--mode=sweep"]
    for arg in argv[1:]:
        prefix = next((p for p in SWEEP_PREFIXES if arg.startswith(p)), None)
        out.append("--config.sweep." + arg[len(prefix) :] if prefix else arg)
    return out


if __name__ == "__main__":
    app.run(main.main, argv=main_argv(sys.argv), flags_parser=cli_checks.parse_flags)

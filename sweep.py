"""Command line of the sampler sweeps (Table 1, quality vs NFE): `experiments/sweep.py`.

    python sweep.py --config configs/vp/ddpm/cifar10.py --workdir W [--shard i/n] \
        [--sweep.samplers="('ode', 'ddim')" --sweep.num_samples=10000 ...]

is `python main.py --config CFG --workdir W --mode sweep` with the grid adjustable through
`--sweep.<field>` flags (see `experiments.sweep_spec.default_sweep_config`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from experiments import sweep  # noqa: E402

if __name__ == "__main__":
    sweep.cli()

"""Samplers beside `sampling.py`'s predictor-corrector and ODE samplers (pure math, no config).

  * `samplers.common`: helpers every sampler shares (`check_shape`, `constrain`, `identity`).
  * `samplers.fast_samplers`: DPM-Solver(++), DDIM and EDM's Heun sampler of the flow ODE.
  * `samplers.sde_solvers`: SRA1 / stochastic Heun predictors and the adaptive SDE sampler.

Layering: these modules import `sde_lib` and `samplers.common` only; `sampling.py` imports them.
"""

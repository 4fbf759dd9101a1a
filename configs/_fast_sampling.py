"""Sampler fields beyond the paper's, shared by every `default_*_configs.py`.

`sampling.get_sampling_fn` reads them for `sampling.method` in 'dpm_solver', 'ddim', 'heun',
'ode' and 'adaptive'; with them in the config, `--config.sampling.steps=...` etc. work under
`lock_config`.
"""


def add_fast_sampler_fields(sampling):
    """Adds the fast / adaptive sampler fields to a `config.sampling` ConfigDict."""
    # Fast samplers (sampling.method 'dpm_solver' | 'ddim' | 'heun'): NFE budget (Heun: steps).
    sampling.steps = 20
    # DPM-Solver order (1, 2, 3), 'singlestep' | 'multistep' | 'singlestep_fixed', and
    # 'dpmsolver' (noise prediction) | 'dpmsolver++' (data prediction).
    sampling.dpm_order = 2
    # DPM-Solver's update scheme.
    sampling.dpm_method = "multistep"
    # DPM-Solver's parameterisation.
    sampling.dpm_algorithm = "dpmsolver"
    # DPM-Solver++: dynamic thresholding of the data predictions (pixel models in [-1, 1]).
    sampling.dpm_thresholding = False
    # DPM-Solver / DDIM time steps: 'logSNR' | 'time_uniform' | 'time_quadratic'.
    sampling.skip_type = "logSNR"
    # EDM Heun: rho of the noise levels, and the integration variable ('t' or 'sigma').
    sampling.heun_rho = 7.0
    # EDM Heun's integration variable.
    sampling.heun_variable = "t"
    # Fast samplers: end with the x0 prediction at eps (one more NFE).
    sampling.fast_denoise = False
    # Probability-flow ODE sampler (method 'ode'): diffrax Dopri5 tolerances.
    sampling.rtol = 1e-5
    # Absolute tolerance of the ODE sampler.
    sampling.atol = 1e-5
    # Adaptive SDE sampler (method 'adaptive'): absolute tolerance; -1 = one 8-bit level in
    # model units (2/255 for centred data, 1/255 otherwise), as the paper's runs.
    sampling.abstol = -1.0
    # Adaptive SDE sampler: relative tolerance.
    sampling.reltol = 0.05
    # Adaptive SDE sampler: initial step size.
    sampling.h_init = 0.01
    return sampling

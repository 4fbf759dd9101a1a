"""Configs of the paper's experiments (`default_*_configs.py`, `{ve,vp,subvp}/...`) and ours.

`get_sweep_config()` holds the fields of `config.sweep`, the grid of `--mode sweep`
(experiments/sweep_grid.py reads them). Every `default_*_configs.py` adds them, so
`--config.sweep.columns=...` works under `lock_config`.
"""

import ml_collections


def get_sweep_config() -> ml_collections.ConfigDict:
    """The fields of `config.sweep` and their defaults: the paper's Table 1 procedure.

    Table 1 (Song et al. 2021, App. G; `shared/reference/score_sde_facts.md` section 8):
    FID as mean +- std over 5 sampling runs; rows ancestral sampling, reverse diffusion,
    probability flow; columns P1000, P2000, C2000, PC1000; snr per cell from Table 5.
    """
    s = ml_collections.ConfigDict()
    # Table 1 rows: predictor names, or 'probability_flow' (reverse diffusion on the flow ODE).
    s.rows = ("ancestral_sampling", "reverse_diffusion", "probability_flow")
    # Table 1 columns, N score evaluations each: P<N> = predictor only on N levels; C<N> =
    # corrector only, N / 2 levels x 2 Langevin steps (N even); PC<N> = N levels, one predictor
    # and one corrector step each (2N evaluations, the paper's PC1000 next to P2000 / C2000).
    s.columns = ("P1000", "P2000", "C2000", "PC1000")
    # snr of the Langevin corrector in the C / PC cells: 'paper' (Table 5 per SDE, column kind
    # and row; sub-VP and rows the paper lacks fall back to config.sampling.snr), 'config'
    # (config.sampling.snr everywhere) or a number such as '0.16'.
    s.snr = "paper"
    # Per-cell snr overrides '[RUN/]COLUMN[:ROW]=snr', COLUMN a column ('PC1000') or a kind
    # ('PC', 'C'), e.g. ('PC:probability_flow=0.2', 'VP/C2000=0.3'); later entries win.
    s.snr_cells = ()
    # How a discrete-time model is queried when a column's N differs from its training N:
    # 'linear' (Table 1: s'(x, i) = s(x, i / 2) for 2N levels), 'round' (Table 4:
    # s(x, floor(i / 2))) or 'native' (the original code's labels).
    s.label_map = "linear"
    # Independent sampling runs per cell (seeds seed, seed + 1, ...); tables show mean +- std.
    s.repeats = 1
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
    # Seed of the sample keys of repeat 0 (every cell starts from the same prior noise; repeat
    # r uses seed + r); -1 = config.seed.
    s.seed = -1
    return s

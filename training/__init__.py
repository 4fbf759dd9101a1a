"""Runtime shared by every network this project trains or evaluates.

`devices` (mesh, host <-> global arrays), `state` (TrainState), `checkpoints` (Orbax manager,
save / restore / last-good fallback, damaged checkpoints moved aside), `lock` (one trainer per
workdir), `schedule` (when the loop logs and saves; no JAX, so the command line checks it
early), `steps` (the jitted train and eval steps), `packing` (the optimizer update's small
leaves packed into one vector), `loop` (the one host loop: stop signals, non-finite checks,
metrics, progress, periodic hooks), `score_model` (a score model's SDE, state and loss from a
config) and `sample_eval` (resumable sample and bits/dim rounds and their metrics).
Orchestration (`run_lib`, `experiments/`) sits above it; the math (`sde_lib`, `sampling`,
`likelihood`, `losses`, `samplers/`) below.
"""

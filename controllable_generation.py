"""Controllable generation (Song et al. 2021, Sec. 5 and App. I): the paper's file and names.

The samplers (class-conditional sampling, inpainting, colorization; pure math on arrays and a
`score_fn(x, t)`) live in `samplers/controllable.py` and are exported here under the original
names. Run as a script, this file is the command line (`experiments/controllable.py`), on a
trained score model in `--workdir`:

    python controllable_generation.py --config CFG --workdir W --mode train_classifier
    python controllable_generation.py --config CFG --workdir W --mode conditional --labels 0,1,2
    python controllable_generation.py --config CFG --workdir W --mode inpaint --mask half
    python controllable_generation.py --config CFG --workdir W --mode colorize --split test

writes `W/controllable/<mode>.png` (rows: input | mask | result) and `<mode>.npz` (uint8).
The classifier lives in `--classifier_workdir` (default `W/classifier`); its hyperparameters are
`experiments.classifier.get_classifier_config()`, overridable as `--classifier.model.depth=16`.
"""

import os

from samplers.controllable import (
    COLOR_INV_M,
    COLOR_M,
    couple,
    decouple,
    get_classifier_grad_fn,
    get_logit_fn,
    get_pc_colorizer,
    get_pc_conditional_sampler,
    get_pc_inpainter,
    noise_level,
)

__all__ = [
    "COLOR_INV_M",
    "COLOR_M",
    "couple",
    "decouple",
    "get_classifier_grad_fn",
    "get_logit_fn",
    "get_pc_colorizer",
    "get_pc_conditional_sampler",
    "get_pc_inpainter",
    "noise_level",
]

if __name__ == "__main__":
    # The command line (classifier training, conditional / inpaint / colorize runs).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app

    from experiments import controllable

    controllable.define_flags()
    app.run(controllable.main)

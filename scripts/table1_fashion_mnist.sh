#!/usr/bin/env bash
# Table 1 of the paper, its procedure at CPU scale on Fashion-MNIST (README "Table 1 on
# Fashion-MNIST"): the demo's feature extractor, a VE (SMLD) and a VP (DDPM) model with the
# discrete objectives at N = 1000, then the sweep (P50 P100 C100 PC50 = the paper's columns / 20, Table 5 snr, 3 repeats).
# Every step resumes where it stopped. Hours on 2 shared CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
RUNS=${RUNS:-runs}

if [ ! -f "$RUNS/extractor/extractor.json" ]; then
  # Exactly as `make demo` trains it, so the fd numbers share one feature space.
  $PY -m evaluation --train_extractor --config configs/demo/fashion_mnist_ddpmpp.py \
    --config.data.path="$DATA" --workdir "$RUNS/extractor" --steps 300
fi
$PY main.py --config configs/demo/fashion_mnist_smld_table1.py --config.data.path="$DATA" \
  --workdir "$RUNS/t1_ve" --mode train
$PY main.py --config configs/demo/fashion_mnist_ddpm_table1.py --config.data.path="$DATA" \
  --workdir "$RUNS/t1_vp" --mode train
$PY bench/table1_fashion_mnist.py --ve_workdir "$RUNS/t1_ve" --vp_workdir "$RUNS/t1_vp" \
  --extractor "$RUNS/extractor" "$@"

#!/usr/bin/env bash
# The offline demo (README command 1): Fashion-MNIST -> DDPM++ (VP, continuous) on CPU ->
# samples, bits/dim and FD/KID in the feature space of a small classifier. ~15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CONFIG=configs/demo/fashion_mnist_ddpmpp.py
WORKDIR=${WORKDIR:-runs/demo}
DATA=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}

if ! ls "$DATA"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "Fashion-MNIST not found in $DATA; installing Debian's dataset-fashion-mnist ..."
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  if ! { $SUDO apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 ||
         { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    cat >&2 <<MSG
Could not install Fashion-MNIST. Either
  * install Debian's package: sudo apt-get install dataset-fashion-mnist, or
  * put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
    t10k-labels-idx1-ubyte.gz in a folder and run: FASHION_MNIST_DIR=/that/folder make demo
MSG
    exit 1
  fi
fi

mkdir -p "$WORKDIR"
echo "== 1/3 feature extractor for the offline FD/KID (small CNN on Fashion-MNIST)"
if [ ! -f "$WORKDIR/extractor/extractor.json" ]; then
  $PY -m evaluation --train_extractor --config "$CONFIG" --config.data.path="$DATA" \
    --workdir "$WORKDIR/extractor" --steps 300
fi
echo "== 2/3 training (resumes if interrupted)"
$PY main.py --config "$CONFIG" --config.data.path="$DATA" --workdir "$WORKDIR" --mode train
echo "== 3/3 evaluation: samples, bits/dim, FD/KID"
$PY main.py --config "$CONFIG" --config.data.path="$DATA" --workdir "$WORKDIR" --mode eval \
  --config.eval.feature_extractor_path="$WORKDIR/extractor"

cat <<EOF2

Demo finished. Outputs:
  samples (PNG grid)      $WORKDIR/eval/ckpt_1/grid.png
  samples (uint8 arrays)  $WORKDIR/eval/ckpt_1/samples_*.npz
  metrics                 $WORKDIR/eval/report_1.json  (eval_loss, bpd, fd_*, kid_*)
  summary table           $WORKDIR/eval/summary.md
  training log            $WORKDIR/metrics.jsonl, $WORKDIR/stdout.txt, $WORKDIR/tensorboard
  checkpoints             $WORKDIR/checkpoints
EOF2
cat "$WORKDIR/eval/summary.md"

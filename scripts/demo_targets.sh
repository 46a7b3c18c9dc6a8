#!/usr/bin/env bash
# The demo's data (synthetic.py --n 500 --seed 0) trained with the T-score as a continuous target, demo
# settings; then the calibration of its test probabilities with the fitted scale against the assumed one.
#   bash scripts/demo_targets.sh [DATA]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${1:-data_demo}
[ -f "$DATA/synthetic.json" ] || $PY synthetic.py --out "$DATA" --n 500 --seed 0
[ -f outs/g32_demo/fold_continuous/test_metrics.json ] || \
  $PY main.py --model dense_net --fold _continuous --augment cat_elastic --late_fuse True --target continuous \
    --data_dir "$DATA" --image_size 176 102 --epoch 15 --batch_size 16 --workers 1 --save_dir g32_demo
$PY scripts/demo_calibration.py outs/g32_demo/fold_continuous

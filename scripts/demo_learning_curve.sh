#!/usr/bin/env bash
# The demo's learning curve checked against the truth (issue 31): 1875 generated patients (3-fold out-of-fold
# CV: about 1000 training patients per fold), the demo's late-fusion network at half the demo's resolution
# (88 x 51, so the five sizes fit the 2-core machine: 18 minutes on 2026-12-07), trained on 50, 100, 200, 500 and
# all (about 1000) training patients per fold with the same folds and seeds; the curve of the first three
# extrapolated to 500 and 1000 and set against the AUC measured there.
#
#     bash scripts/demo_learning_curve.sh [OUT_GROUP]     # default outs/lc_demo
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GROUP=${1:-lc_demo}
[ -f lcdata/synthetic.json ] || "$PY" synthetic.py --out lcdata --n 1875 --seed 0
"$PY" main.py --model dense_net --augment cat_elastic --late_fuse True --data_dir lcdata --folds 3 --cv oof \
    --image_size 88 51 --epoch 15 --batch_size 16 --workers 1 --deterministic --save_dir "$GROUP" \
    --learning_curve 50 100 200 500
"$PY" scripts/lc_extrapolation_check.py "outs/$GROUP" --fit_max 200

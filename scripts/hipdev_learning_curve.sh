#!/usr/bin/env bash
# hip-dev's learning curve (issue 31, docs/learning-curve.md): the best route of docs/real-radiographs.md
# (row h: the recipe with the demo pretraining, on the half images) trained on 25 %, 50 % and all of each
# fold's training patients, the same 5 patient folds; then the texture yardstick (row t, no network, no
# clinical values: hip-dev has none) on the same nested subsets. About 25 minutes on the 2-core machine.
#
#     bash scripts/hipdev_learning_curve.sh HIP_DEV_DIR [WORK_DIR]   # e.g. ../shared/data/hip-dev /tmp/hipdev
#
# Reads HIP_DEV_DIR (raw/, patient_list.csv) only; data folders go to WORK_DIR, runs to outs/.
# Needs the demo's data/ (make demo) for the pretraining of row h.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SRC=${1:?usage: hipdev_learning_curve.sh HIP_DEV_DIR [WORK_DIR]}
WORK=${2:-/tmp/hipdev}
[ -d "$WORK/base" ] || "$PY" preprocess_filenames.py --images "$SRC/raw" --csv "$SRC/patient_list.csv" \
    --out "$WORK/base" --split-hips --folds 5
[ -d "$WORK/roi" ] || "$PY" preprocess_filenames.py --images "$SRC/raw" --csv "$SRC/patient_list.csv" \
    --id-col patient_id --label-col label --roi femur --split 1 0 0 --folds 5 --out "$WORK/roi"
[ -f outs/p_demo/fold_demo/best.pth ] || "$PY" main.py --model dense_net --augment cat_elastic --image_only \
    --image_size 176 102 --epoch 15 --cpus 2 --workers 1 --data_dir data --save_dir p_demo --fold _demo
"$PY" main.py --model dense_net --augment cat_elastic,flip,gamma --augment_p 0.5 --drop_rate 0.2 \
    --ema 0.99 --tta flip --sampler weight --image_only --folds 5 --cv oof --image_size 176 102 \
    --epoch 30 --cpus 2 --workers 1 --data_dir "$WORK/base" --save_dir lc_hipdev_h \
    --pretrained outs/p_demo/fold_demo --learning_curve 0.25 0.5
"$PY" scripts/texture_check.py "$WORK/roi" --learning_curve 0.25 0.5 1.0

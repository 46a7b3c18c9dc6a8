#!/usr/bin/env bash
# docs/fusion.md's table: three generated regimes x two sizes x four fusion modes, the same folds and
# seeds, then one markdown table (scripts/fusion_table.py). One training at a time (docs/speed.md).
#   bash scripts/fusion_regimes.sh [DATA_ROOT]      # about 90 min on one CPU core (--cpus 1)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROOT=${1:-data_regimes}
declare -A REGIME=([clinical]="--clinical-share 0.8 --image-noise 3.0"
                   [both]="--clinical-share 0.5 --image-noise 1.5"
                   [image]="--clinical-share 0.05 --image-noise 0.6")
for n in 150 500; do
  for r in clinical both image; do
    $PY synthetic.py --out "$ROOT/${r}_$n" --n $n --seed 0 ${REGIME[$r]}
    for m in residual late image early; do
      [ -f "outs/f20_${r}_${n}_$m/cv_summary.json" ] && continue  # finished: rerunning continues the table
      $PY main.py --model dense_net --fusion $m --augment cat_elastic --data_dir "$ROOT/${r}_$n" \
        --image_size 112 64 --epoch 12 --batch_size 16 --workers 0 --cpus 1 --folds 5 --cv oof \
        --bootstrap 200 --seed 0 --save_dir "f20_${r}_${n}_$m"
    done
  done
done
for g in outs/f20_*_*_*; do $PY report.py --cv "$g" --bootstrap 2000 > /dev/null; done
$PY scripts/fusion_table.py outs/f20_

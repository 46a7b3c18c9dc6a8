#!/usr/bin/env bash
# docs/targets.md's table "residual fusion for every target": the three generated regimes of docs/fusion.md
# at 150 and 500 patients, the same folds and seeds, six ways to use the clinical values and the image:
# binary residual, continuous residual, ordinal residual, continuous late, late, image only (and, in every
# cross-validation's summary, the clinical baseline refitted per fold). One training per core (docs/speed.md):
#   bash scripts/target_fusion.sh [DATA_ROOT] [a|b|150|all]   # stream a and b run side by side on two cores
# Then: python scripts/target_fusion_table.py outs/g32_
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROOT=${1:-data_regimes}
STREAM=${2:-all}
declare -A REGIME=([clinical]="--clinical-share 0.8 --image-noise 3.0"
                   [both]="--clinical-share 0.5 --image-noise 1.5"
                   [image]="--clinical-share 0.05 --image-noise 0.6")
declare -A MODE=([res]="--fusion residual" [cres]="--fusion residual --target continuous"
                 [ores]="--fusion residual --target ordinal" [clate]="--fusion late --target continuous"
                 [late]="--fusion late" [image]="--fusion image")
# two streams of about equal work: a 500-patient cross-validation costs about 3.3 of 150 patients
case $STREAM in
  a) CELLS="clinical_150 both_150 image_150 image_500" ;;
  b) CELLS="clinical_500 both_500" ;;
  150) CELLS="clinical_150 both_150 image_150" ;;
  *) CELLS="clinical_150 both_150 image_150 clinical_500 both_500 image_500" ;;
esac
for cell in $CELLS; do
  r=${cell%_*}; n=${cell#*_}
  [ -f "$ROOT/${r}_$n/synthetic.json" ] || $PY synthetic.py --out "$ROOT/${r}_$n" --n "$n" --seed 0 ${REGIME[$r]}
  for m in res cres ores clate late image; do
    [ -f "outs/g32_${r}_${n}_$m/cv_summary.json" ] && continue  # finished: rerunning continues the table
    resume=""; [ -d "outs/g32_${r}_${n}_$m" ] && resume="--resume"
    $PY main.py --model dense_net ${MODE[$m]} --augment cat_elastic --data_dir "$ROOT/${r}_$n" \
      --image_size 112 64 --epoch 12 --batch_size 16 --workers 0 --cpus 1 --folds 5 --cv oof \
      --bootstrap 200 --seed 0 --save_dir "g32_${r}_${n}_$m" $resume
  done
done

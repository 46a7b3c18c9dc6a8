#!/usr/bin/env bash
# Binary against continuous against ordinal targets on the demo radiographs (issue 21): with 100, 250 or
# 500 labelled patients, does learning the T-score (or its WHO class) instead of the yes/no label give a
# higher out-of-fold AUC?
#
#   bash scripts/target_table.sh                                   # the measurement: about an hour on one core
#   EPOCHS=1 PATIENTS="20 30" SIZE="64 37" OUT=outs/tt-smoke bash scripts/target_table.sh   # a smoke run
#
# Rows fixed before running: the demo set (synthetic.py --seed 0, LABELLED patients, its true T-scores in
# manifest.csv); for each N the first N patients of one seeded order (nested), all in train/, so
# main.py --folds K --cv oof tests every one of them once; for each target the same command, folds
# and --seed; only --target differs (ordinal: the WHO classes of the T-score; the cut T <= -2.5 in all
# three). Image only, so the table shows what the image learns. Printed: a markdown table of the pooled
# out-of-fold ROC AUC with its patient-bootstrap 95 % CI, the MAE and Pearson r of the predicted T-score
# (continuous) or the quadratically weighted kappa of the WHO class (ordinal), and the wall time. A step
# whose result exists is not run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-outs/targets}
SIZE=${SIZE:-112 64}
LABELLED=${LABELLED:-500}
PATIENTS=${PATIENTS:-100 250 500}
FOLDS=${FOLDS:-5}
SEED=${SEED:-0}
EPOCHS=${EPOCHS:-12}
FLAGS=${FLAGS:---model dense_net --augment cat_elastic --image_only --batch_size 16 --workers 1}
read -r -a HW <<<"$SIZE"
RUNS="$OUT/runs"; TIMES="$OUT/times.tsv"
mkdir -p "$RUNS"; touch "$TIMES"
export PYTHONUNBUFFERED=1

[ -f "$OUT/labelled/synthetic.json" ] || $PY synthetic.py --out "$OUT/labelled" --n "$LABELLED" --seed 0 --size "${HW[@]}"
for n in $PATIENTS; do
  [ -d "$OUT/n$n/train" ] || $PY scripts/nested_subset.py "$OUT/labelled" "$OUT/n$n" "$n" "$SEED"
  for target in binary continuous ordinal; do
    name="n${n}_$target"
    if grep -q "^$name	" "$TIMES"; then echo "== $name: done before"; continue; fi
    echo "== $name"
    t0=$SECONDS
    # shellcheck disable=SC2086  # FLAGS is a list of flags
    $PY main.py --data_dir "$OUT/n$n" $FLAGS --image_size "${HW[@]}" --epoch "$EPOCHS" --folds "$FOLDS" --cv oof \
        --seed "$SEED" --target "$target" --out_root "$RUNS" --save_dir "$name" >"$OUT/$name.log" 2>&1 \
        || { echo "$name failed: see $OUT/$name.log" >&2; tail -3 "$OUT/$name.log" >&2; exit 1; }
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >>"$TIMES"
  done
done
$PY scripts/target_table.py "$RUNS" "$TIMES" $PATIENTS

#!/usr/bin/env bash
# Two default demo trainings at once (FLAGS: other settings for both) (issue 30, keeping issue 23's goal): each job's training images/s
# alone and beside the other, both with main.py's default thread plan (no --cpus, no OMP_NUM_THREADS).
#
#     bash scripts/pair_check.sh [DATA]      # on an otherwise idle machine; about 5 minutes
#
# DATA: the demo's data folder (made with synthetic.py --n 500 --seed 0 when missing). Figures: the median
# of history.csv's train_images_per_s over the epochs after the first. In the pair both jobs run the same
# number of epochs from the same start, so every pair epoch was measured with both running (the second job
# ends within an epoch of the first). Goal (issue 23): in the pair each job keeps >= 35 % of its solo speed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${1:-data}
EPOCHS=${EPOCHS:-3}
FLAGS=${FLAGS:-}  # e.g. FLAGS="--cpus 1": both jobs with that thread plan instead of the default
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
[ -f "$DATA/synthetic.json" ] || "$PY" synthetic.py --out "$DATA" --n 500 --seed 0 >/dev/null 2>&1
unset OMP_NUM_THREADS
run() {  # run NAME: the demo command for $EPOCHS epochs into $TMP/outs/NAME
    "$PY" main.py --model dense_net --fold _Dense_LF --augment cat_elastic --late_fuse True --data_dir "$DATA" \
        --image_size 176 102 --epoch "$EPOCHS" --batch_size 16 --workers 1 --bootstrap 0 \
        --out_root "$TMP/outs" --save_dir "$1" $FLAGS >"$TMP/$1.log" 2>&1
}
speed() {
    "$PY" -c '
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
speeds = [float(r["train_images_per_s"]) for r in rows[1:]]
print(f"{statistics.median(speeds):.1f}")' "$TMP/outs/$1/fold_Dense_LF/history.csv"
}
run solo
solo=$(speed solo)
run one & run two & wait
one=$(speed one); two=$(speed two)
grep -h "torch thread" "$TMP/solo.log" | head -1 | sed 's/^[0-9:]* INFO //'
printf 'alone: %s img/s; the pair: %s and %s img/s (%s %% and %s %% of alone; goal >= 35 %%)\n' "$solo" "$one" "$two" \
    "$("$PY" -c "print(round(100*$one/$solo))")" "$("$PY" -c "print(round(100*$two/$solo))")"

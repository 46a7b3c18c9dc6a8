#!/usr/bin/env bash
# The demo's training and report (make demo's main.py line), whole commands timed over RUNS runs each, in
# turn: the default plan against the former one (issue 30). Prints one line per run and min / median / max.
#
#     bash scripts/demo_timing.sh [DATA] [RUNS]     # on an otherwise idle machine; about 5 minutes per pair
#
# new: make demo's command as it is (every core, channels_last, --deterministic);
# old: the same with "--cpus 1 --channels_last false", the plan before issue 30 on a 2-core machine
#      (one torch thread: the cores less the loader worker; NCHW below 352 x 204).
# Columns: wall s, CPU s (user + system of the command and its children), CPU use, training images/s
# (median of history.csv's train_images_per_s over epochs 2-15), test roc_auc.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${1:-data}
RUNS=${2:-3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -f "$DATA/synthetic.json" ] || "$PY" synthetic.py --out "$DATA" --n 500 --seed 0 >/dev/null 2>&1
unset OMP_NUM_THREADS
one() {  # one NAME EXTRA_FLAGS...: prints NAME wall cpu use img/s auc
    local name=$1; shift
    /usr/bin/time -f "%e %U %S" -o "$TMP/time" "$PY" main.py --model dense_net --fold _Dense_LF --augment cat_elastic \
        --late_fuse True --data_dir "$DATA" --image_size 176 102 --epoch 15 --batch_size 16 --workers 1 --deterministic \
        --out_root "$TMP/outs" --save_dir "$name" "$@" >"$TMP/$name.log" 2>&1
    "$PY" - "$name" "$TMP" <<'PY'
import csv, json, statistics, sys
name, tmp = sys.argv[1:]
wall, user, system = map(float, open(f"{tmp}/time").read().split()[-3:])
rows = list(csv.DictReader(open(f"{tmp}/outs/{name}/fold_Dense_LF/history.csv")))
speed = statistics.median(float(r["train_images_per_s"]) for r in rows[1:])
auc = json.load(open(f"{tmp}/outs/{name}/fold_Dense_LF/test_metrics.json"))["at_threshold"]["roc_auc"]
print(f"{name:6s} {wall:7.1f} {user + system:7.1f} {100 * (user + system) / wall:5.0f} % {speed:7.1f} {auc:.4f}", flush=True)
PY
}
echo "run      wall s   CPU s   use   img/s  test roc_auc"
for i in $(seq "$RUNS"); do
    one "new$i" | tee -a "$TMP/new"
    one "old$i" --cpus 1 --channels_last false | tee -a "$TMP/old"
done
for plan in new old; do
    "$PY" - "$plan" "$TMP/$plan" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[2])]
for col, name in ((1, "wall s"), (2, "CPU s"), (5, "img/s")):
    v = sorted(float(r[col]) for r in rows)
    print(f"{sys.argv[1]} {name}: {v[0]:.1f} / {statistics.median(v):.1f} / {v[-1]:.1f} (min / median / max)")
PY
done

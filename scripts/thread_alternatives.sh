#!/usr/bin/env bash
# The CPU thread plan against its alternatives (issue 30), one run each on an otherwise idle machine: the demo's
# command for 4 epochs without the report under each setting, then the report and a heatmap sheet of the first
# run with one thread and with the default.
#
#     bash scripts/thread_alternatives.sh [DATA]     # about 6 minutes
#
# Columns: wall s of the whole command, CPU use, training images/s (median of epochs 2-4), and the seconds
# outside the training steps (start, decoding the images into the cache, validation, checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${1:-data}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -f "$DATA/synthetic.json" ] || "$PY" synthetic.py --out "$DATA" --n 500 --seed 0 >/dev/null 2>&1
unset OMP_NUM_THREADS GOMP_SPINCOUNT OMP_WAIT_POLICY
one() {  # one NAME ENV FLAGS...
    local name=$1 env=$2; shift 2
    env $env /usr/bin/time -f "%e %U %S" -o "$TMP/time" "$PY" main.py --model dense_net --fold _Dense_LF \
        --augment cat_elastic --late_fuse True --data_dir "$DATA" --image_size 176 102 --epoch 4 --batch_size 16 \
        --workers 1 --bootstrap 0 --out_root "$TMP/outs" --save_dir "$name" "$@" >"$TMP/$name.log" 2>&1
    "$PY" - "$name" "$TMP" "$env $*" <<'PY'
import csv, statistics, sys
name, tmp, how = sys.argv[1:]
wall, user, system = map(float, open(f"{tmp}/time").read().split()[-3:])
rows = list(csv.DictReader(open(f"{tmp}/outs/{name}/fold_Dense_LF/history.csv")))
speed = statistics.median(float(r["train_images_per_s"]) for r in rows[1:])
steps = sum(float(r["train_seconds"]) for r in rows)
print(f"{how.strip() or 'default':44s} {wall:6.1f} {100 * (user + system) / wall:5.0f} % {speed:7.1f} {wall - steps:6.1f}",
      flush=True)
PY
}
echo "setting                                        wall s   use    img/s  other s"
one base ""
one nchw "" --channels_last false
one w0 "" --workers 0
one w2 "" --workers 2
one c1 "" --cpus 1
one spin "GOMP_SPINCOUNT=300000"
one passive "OMP_WAIT_POLICY=PASSIVE"
one bf16 "" --dtype half
RUN="$TMP/outs/base/fold_Dense_LF"
for threads in 1 2; do
    /usr/bin/time -f "%e" -o "$TMP/t" env OMP_NUM_THREADS=$threads "$PY" report.py --run "$RUN" >/dev/null 2>&1
    echo "report.py --run, OMP_NUM_THREADS=$threads: $(cat "$TMP/t") s"
    /usr/bin/time -f "%e" -o "$TMP/t" env OMP_NUM_THREADS=$threads "$PY" visualize_gradcam.py --run "$RUN" \
        --select tp fn --top 1 --sheet --method expected_gradients --out "$TMP/cams$threads" >/dev/null 2>&1
    echo "visualize_gradcam.py sheet, OMP_NUM_THREADS=$threads: $(cat "$TMP/t") s"
done

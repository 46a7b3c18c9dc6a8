#!/usr/bin/env bash
# Label efficiency on the demo radiographs: with 25, 50, 100 or 250 labelled patients, does a start
# from self-supervised pretraining (pretrain.py, SimCLR, labels never read) beat a start from scratch
# and a start from supervised pretraining on the same images (main.py with their labels)?
#
#   bash scripts/label_efficiency.sh                  # the whole measurement: hours on a CPU (size it below)
#   SSL_EPOCHS=1 SUP_EPOCHS=1 FT_EPOCHS=1 POOL=16 LABELLED=40 PATIENTS="20 30" SIZE="64 37" \
#       OUT=outs/le-smoke bash scripts/label_efficiency.sh      # a smoke run of every step
#
# Rows fixed before running. Two disjoint drawn populations, so no scored patient is ever pretrained on:
#   pool      synthetic.py --seed 1, POOL patients (2 images each): the pretraining images. pretrain.py
#             reads only their pixels; the supervised row trains main.py on the pool's train/val.
#   labelled  synthetic.py --seed 0 (the demo set), LABELLED patients; for each N in PATIENTS the first N
#             of one seeded order (nested: the 25 are among the 50), all in train/, so main.py --folds K
#             --cv oof tests every one of them once, out of fold.
# For each N and start (scratch, supervised, ssl) the same command, folds and --seed; only --pretrained
# differs. Printed: a markdown table of the pooled out-of-fold ROC AUC with its patient-bootstrap 95 % CI
# and the fine-tuning wall time, then the pretraining wall times. A step whose result exists is not
# run again, so the same command continues an interrupted measurement (wall times from the first run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-outs/label-efficiency}
SIZE=${SIZE:-176 102}                # pretraining and fine-tuning size (H W)
POOL=${POOL:-1000}                   # pretraining patients (2000 images)
LABELLED=${LABELLED:-500}            # the demo set's patients (PATIENTS are taken from them)
PATIENTS=${PATIENTS:-25 50 100 250}
FOLDS=${FOLDS:-5}
SEED=${SEED:-0}
SSL_EPOCHS=${SSL_EPOCHS:-20}         # pretrain.py epochs over the pool: 23 min on one CPU core (docs/pretraining.md)
SSL_BATCH=${SSL_BATCH:-32}
SUP_EPOCHS=${SUP_EPOCHS:-15}         # supervised pretraining epochs on the pool (the demo's 15)
FT_EPOCHS=${FT_EPOCHS:-15}           # fine-tuning epochs per fold
FT_FLAGS=${FT_FLAGS:---model dense_net --augment cat_elastic --image_only --batch_size 16}
read -r -a HW <<<"$SIZE"
RUNS="$OUT/runs"; TIMES="$OUT/times.tsv"
mkdir -p "$RUNS"; touch "$TIMES"
export PYTHONUNBUFFERED=1

timed() {  # timed NAME CMD...: run once, log to OUT/NAME.log, note the wall time
  local name=$1; shift
  if grep -q "^$name	" "$TIMES"; then echo "== $name: done before"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1 || { echo "$name failed: see $OUT/$name.log" >&2; tail -3 "$OUT/$name.log" >&2; exit 1; }
  printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >>"$TIMES"
}

[ -f "$OUT/pool/synthetic.json" ] || $PY synthetic.py --out "$OUT/pool" --n "$POOL" --seed 1 --size "${HW[@]}"
[ -f "$OUT/labelled/synthetic.json" ] || $PY synthetic.py --out "$OUT/labelled" --n "$LABELLED" --seed 0 --size "${HW[@]}"

timed pretrain_ssl $PY pretrain.py --data_dir "$OUT/pool" --image_size "${HW[@]}" --epoch "$SSL_EPOCHS" \
    --batch_size "$SSL_BATCH" --seed "$SEED" --out_root "$RUNS" --save_dir ssl
# shellcheck disable=SC2086  # FT_FLAGS is a list of flags
timed pretrain_supervised $PY main.py --data_dir "$OUT/pool" $FT_FLAGS --image_size "${HW[@]}" \
    --epoch "$SUP_EPOCHS" --seed "$SEED" --bootstrap 0 --out_root "$RUNS" --save_dir supervised --fold _pool

for n in $PATIENTS; do
  [ -d "$OUT/n$n/train" ] || $PY scripts/nested_subset.py "$OUT/labelled" "$OUT/n$n" "$n" "$SEED"
  for start in scratch supervised ssl; do
    case $start in
      scratch) from=();;
      supervised) from=(--pretrained "$RUNS/supervised/fold_pool");;
      ssl) from=(--pretrained "$RUNS/ssl");;
    esac
    # shellcheck disable=SC2086
    timed "n${n}_$start" $PY main.py --data_dir "$OUT/n$n" $FT_FLAGS --image_size "${HW[@]}" --epoch "$FT_EPOCHS" \
        --folds "$FOLDS" --cv oof --seed "$SEED" --out_root "$RUNS" --save_dir "n${n}_$start" "${from[@]}"
  done
done

$PY - "$RUNS" "$TIMES" "$PATIENTS" <<'EOF'
import json, sys
from pathlib import Path
from report_render import ci
runs, times, patients = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split()
seconds = dict(line.split("\t") for line in times.read_text().splitlines() if line)
def minutes(name):
    return f"{int(seconds[name]) / 60:.1f} min" if name in seconds else "n/a"
print("| labelled patients | start | pooled out-of-fold ROC AUC (95 % CI) | images | fine-tuning wall time |")
print("|---:|---|---|---:|---:|")
for n in patients:
    for start in ("scratch", "supervised", "ssl"):
        summary = json.loads((runs / f"n{n}_{start}" / "cv_summary.json").read_text())
        pooled = summary["pooled"]
        print(f"| {n} | {start} | {ci(pooled['metrics']['roc_auc'])} | {pooled['n_images']} | {minutes(f'n{n}_{start}')} |")
print()
print(f"pretraining wall time: self-supervised {minutes('pretrain_ssl')}, supervised {minutes('pretrain_supervised')}")
EOF

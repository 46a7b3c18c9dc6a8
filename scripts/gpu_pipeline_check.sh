#!/usr/bin/env bash
# The GPU goals of the 8-bit / device-side pipeline (docs/gpu-pipeline.md), measured in one pass:
#   bash scripts/gpu_pipeline_check.sh OUTDIR        (on a CUDA machine; not yet run on one: budget ~6 min)
#   SIZE=64x37 PATIENTS=8 DEMO_PATIENTS=8 EPOCHS50=1 WORKERS=1 bash scripts/gpu_pipeline_check.sh OUTDIR
#     (a dry run on a CPU: 80 s on the 2-core dev machine, 2026-12-01; its verdicts mean nothing there)
# Goals, printed PASS/FAIL at the end from OUTDIR/*.json and the seed run's log:
#   1. the seed command (dense_net late fusion, cat_elastic) at 704 x 407 waits < 5 % of an epoch,
#   2. and trains at >= 90 % of the step-alone rate (bench.py pipeline, uint8 + device augmentation),
#   3. the 50-epoch seed command on the 500-patient demo set takes < 90 s,
#   4. densenet121 is unchanged or faster than with the float32 handover.
set -u
OUT=${1:?usage: gpu_pipeline_check.sh OUTDIR}
SIZE=${SIZE:-704x407}; PATIENTS=${PATIENTS:-300}; DEMO_PATIENTS=${DEMO_PATIENTS:-500}; WORKERS=${WORKERS:-8}
EPOCHS50=${EPOCHS50:-50}; PY=${PYTHON:-python3}
H=${SIZE%x*}; W=${SIZE#*x}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
STATUS=()
step() {  # step NAME SECONDS CMD...  (capped by timeout, logged to OUTDIR/NAME.log; the run goes on)
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  STATUS+=("$name rc=$? $((SECONDS - t0))s")
  grep -E "handover|MB/batch|^ *[0-9]+x[0-9]+ |best epoch|Error|error" "$OUT/$name.log" | grep -v "it/s\]" | tail -8
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
step data 150 $PY synthetic.py --out "$TMP/big" --n "$PATIENTS" --seed 0 --size "$H" "$W"
# goals 1 and 2: the three pipelines side by side on the default network, then on densenet121 (goal 4)
step pipeline 300 $PY bench.py pipeline --data_dir "$TMP/big" --sizes "$SIZE" --batch 16 --workers "$WORKERS" \
  --steps 20 --loader_batches 30 --epochs 3 --json "$OUT/pipeline.json"
step pipeline_d121 240 $PY bench.py pipeline --data_dir "$TMP/big" --models densenet121 --sizes "$SIZE" --batch 16 \
  --workers "$WORKERS" --steps 20 --loader_batches 30 --epochs 2 --json "$OUT/pipeline_d121.json"
# goal 3: the seed command's 50 epochs, timed whole (decode, 50 epochs, test), on the demo set
step data_demo 150 $PY synthetic.py --out "$TMP/demo" --n "$DEMO_PATIENTS" --seed 0 --size "$H" "$W"
step seed50 300 /usr/bin/time -f "seed50 wall %e s" $PY main.py --model dense_net --fold _Dense_LF \
  --augment cat_elastic --late_fuse True --data_dir "$TMP/demo" --image_size "$H" "$W" --epoch "$EPOCHS50" \
  --workers "$WORKERS" --bootstrap 0 --save_dir seed50 --out_root "$TMP/outs"
cp "$TMP"/outs/seed50/*/train.log "$OUT/seed50_train.log" 2>/dev/null
$PY - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
def rows(name):
    try:
        return {r["pipeline"]: r for r in json.loads((out / name).read_text())["pipeline"]}
    except (OSError, KeyError, ValueError) as exc:
        print(f"{name}: unreadable ({exc})"); return {}
def verdict(ok): return "PASS" if ok else "FAIL"
p = rows("pipeline.json")
dev = p.get("uint8 handover, device augment", {}); old = p.get("float32 handover, CPU augment (before)", {})
if "epoch_wait" in dev:
    print(f"1. wait {100 * dev['epoch_wait']:.1f} % of an epoch (goal < 5 %; before {100 * old.get('epoch_wait', float('nan')):.1f} %): "
          f"{verdict(dev['epoch_wait'] < 0.05)}")
    share = dev["epoch_img_s"] / dev["step_img_s"]
    print(f"2. epoch {dev['epoch_img_s']:.0f} img/s = {100 * share:.0f} % of the step alone {dev['step_img_s']:.0f} img/s "
          f"(goal >= 90 %): {verdict(share >= 0.9)}")
log = (out / "seed50.log").read_text() if (out / "seed50.log").exists() else ""
m = re.search(r"seed50 wall ([0-9.]+) s", log)
print(f"3. 50-epoch seed command {m.group(1) + ' s' if m else 'did not finish'} (goal < 90 s): {verdict(bool(m) and float(m.group(1)) < 90)}")
d = rows("pipeline_d121.json")
a, b = d.get("uint8 handover, device augment", {}), d.get("float32 handover, CPU augment (before)", {})
if "epoch_img_s" in a and "epoch_img_s" in b:
    print(f"4. densenet121 epoch {a['epoch_img_s']:.0f} img/s against {b['epoch_img_s']:.0f} with the float32 handover "
          f"(goal: unchanged or faster, within 5 %): {verdict(a['epoch_img_s'] >= 0.95 * b['epoch_img_s'])}")
EOF
printf '%s\n' "${STATUS[@]}"

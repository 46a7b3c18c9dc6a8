#!/usr/bin/env bash
# One prepared pass over the CUDA code paths and the GPU speed figures (README "Speed (bench.py)").
#   bash scripts/gpu_check.sh OUTDIR            (on a CUDA machine; about 5 minutes on one H200:
#                                                  measured as 200 s + 94 s in two parts)
#   SIZE=88x51 PATIENTS=12 BENCH_STEPS=2 bash scripts/gpu_check.sh OUTDIR   (a quick dry run on a CPU)
#   ONLY="data_big epoch_wait bench_loader" bash scripts/gpu_check.sh OUTDIR   (some steps only)
# Each step is capped by `timeout`, logs to OUTDIR/<step>.log, and the run goes on if one fails; the
# last lines summarise which steps passed.
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR}
SIZE=${SIZE:-704x407}; PATIENTS=${PATIENTS:-60}; BIG_PATIENTS=${BIG_PATIENTS:-300}; ONLY=${ONLY:-}; BENCH_STEPS=${BENCH_STEPS:-10}; WORKERS=${WORKERS:-8}
PY=${PYTHON:-python3}
H=${SIZE%x*}; W=${SIZE#*x}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
STATUS=()
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STATUS+=("$name rc=$rc $((SECONDS - t0))s")
  grep -E "epoch [0-9]+ +train loss|roc_auc|img/s|precision|Error|error" "$OUT/$name.log" | grep -v "it/s\]" | tail -8
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, torchvision, numpy; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
COMMON=(--data_dir "$TMP/data" --image_size "$H" "$W" --batch_size 16 --workers "$WORKERS" --out_root "$TMP/outs")
step data 120 $PY synthetic.py --out "$TMP/data" --n "$PATIENTS" --seed 0 --size "$H" "$W"
# the seed command's flags; autocast (bf16 where supported) and channels_last by default on CUDA
step late_auto 150 $PY main.py --model dense_net --fold _Dense_LF --augment cat_elastic --late_fuse True \
  --epoch 3 --save_dir gpu "${COMMON[@]}"
# early fusion, densenet121, fp16 autocast + GradScaler
step early_half 150 $PY main.py --model densenet121 --fold _d121_EF --augment cat_elastic --late_fuse False \
  --dtype half --epoch 2 --save_dir gpu "${COMMON[@]}"
# torchrun (NCCL on CUDA), one process per GPU; SyncBatchNorm where there are several
NGPU=$($PY -c "import torch; print(max(torch.cuda.device_count(), 1))")
SYNC=(); [ "$NGPU" -gt 1 ] && SYNC=(--sync_bn)
step torchrun 150 $PY -m torch.distributed.run --standalone --nproc_per_node="$NGPU" main.py --model dense_net \
  --fold _ddp --augment cat_elastic --late_fuse True "${SYNC[@]}" --epoch 2 --save_dir gpu "${COMMON[@]}"
step gradcam 90 $PY visualize_gradcam.py --run "$TMP/outs/gpu/fold_Dense_LF" --index 0 1 --method gradcam --out "$OUT/cams"
step expected_gradients 90 $PY visualize_gradcam.py --run "$TMP/outs/gpu/fold_Dense_LF" --index 0 1 \
  --method expected_gradients --sheet --no_npy --out "$OUT/cams"
# an epoch long enough to tell whether the GPU waits for the loader (the log's "waiting for data")
step data_big 120 $PY synthetic.py --out "$TMP/big" --n "$BIG_PATIENTS" --seed 0 --size "$H" "$W"
step epoch_wait 200 $PY main.py --model dense_net --fold _wait --augment cat_elastic --late_fuse True --epoch 3 \
  --save_dir gpu --data_dir "$TMP/big" --image_size "$H" "$W" --batch_size 16 --workers "$WORKERS" --out_root "$TMP/outs"
for f in "$TMP"/outs/gpu/*/train.log; do
  cp "$f" "$OUT/train_$(basename "$(dirname "$f")").log"; done
step bench_train 300 $PY bench.py train --sizes "$SIZE" --batch 16 --steps "$BENCH_STEPS" --workers "$WORKERS" \
  --patients 20 --json "$OUT/bench_train.json"
step bench_loader 150 $PY bench.py loader --sizes "$SIZE" --batch 16 --steps "$BENCH_STEPS" --loader_workers 4 "$WORKERS" 14 \
  --augments cat_elastic --patients 20 --json "$OUT/bench_loader.json"
for log in bench_train bench_loader; do [ -f "$OUT/$log.log" ] && sed -n '/^training/,$p' "$OUT/$log.log"; done
grep -ah "INFO epoch" "$OUT"/train_*.log 2>/dev/null | sed 's/.*INFO //' | cut -c1-40,120-
printf '%s\n' "${STATUS[@]}"

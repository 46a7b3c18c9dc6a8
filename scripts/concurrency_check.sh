#!/usr/bin/env bash
# Two trainings at once on a 2-core machine (issue 23): how fast each runs alone and beside the other, for
# libgomp's default spin before sleeping, the project's GOMP_SPINCOUNT (runtime.SPIN_COUNT, what main.py sets
# when the user set neither GOMP_SPINCOUNT nor OMP_WAIT_POLICY), a shorter spin and OMP_WAIT_POLICY=PASSIVE.
#
#     bash scripts/concurrency_check.sh            # on an otherwise idle machine; 3-5 minutes
#
# Job A: main.py --cpus 2 --workers 1; job B: main.py --cpus 1 --workers 0; both DenseNet-BC-40 at 176 x 102 on
# a synthetic set. Figures are training images/s (history.csv), the median over the epochs after the first.
# In the pair, B keeps training until A has ended and only B's epochs that ended before then count, so every
# pair figure was measured with both jobs running. Goal (issue 23): in the pair each job keeps >= 35 % of its
# solo speed, and A alone keeps >= 95 % of its solo speed under libgomp's default.
# A run alone is stopped after 20 s, a pair after 45 s (finished epochs still count): 4 x (20 + 20 + 45) s, so the
# script ends within 6 minutes; on a busy machine a stopped run may show n/a.
# QUICK=1: a smoke test of this script (64 x 37 images, depth 10); its figures mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT

if [[ "${QUICK:-0}" == 1 ]]; then
    SIZE=(64 37); MODEL=(--depth 10); N=20; EPOCHS=2
else
    SIZE=(176 102); MODEL=(); N=40; EPOCHS=3
fi
"$PY" synthetic.py --out "$TMP/data" --n "$N" --seed 0 --size "${SIZE[@]}" >/dev/null 2>&1
COMMON=(--data_dir "$TMP/data" --image_size "${SIZE[@]}" "${MODEL[@]}" --bootstrap 0 --device cpu
        --out_root "$TMP/outs" --fold _x)
A=(--cpus 2 --workers 1)
B=(--cpus 1 --workers 0)

speed() {  # median training img/s over epochs 2.. of a run folder
    "$PY" -c '
import csv, statistics, sys
from pathlib import Path
path = Path(sys.argv[1]) / "history.csv"
rows = list(csv.DictReader(open(path))) if path.is_file() else []
speeds = [float(r["train_images_per_s"]) for r in rows[1:]]
print(f"{statistics.median(speeds):.1f}" if speeds else "n/a")' "$1"
}

share() {  # 100 * $1 / $2
    "$PY" -c "import sys; a, b = sys.argv[1:]; print('n/a' if 'n/a' in (a, b) else f'{100 * float(a) / float(b):.0f}')" "$@"
}

train() {  # train NAME EPOCHS ENV... -- FLAGS...: one run, in the foreground
    local name=$1 epochs=$2; shift 2
    local envs=(); while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
    timeout "${LIMIT:-20}" env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY -u OMP_NUM_THREADS "${envs[@]}" \
        "$PY" main.py "${COMMON[@]}" --save_dir "$name" --epoch "$epochs" "$@" >"$TMP/$name.log" 2>&1 || true
}

pair() {  # pair NAME ENV...: A for EPOCHS epochs beside B, which trains until A has ended
    local name=$1; shift
    env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY -u OMP_NUM_THREADS "$@" "$PY" main.py "${COMMON[@]}" \
        --save_dir "${name}_B" --epoch 1000 "${B[@]}" >"$TMP/${name}_B.log" 2>&1 &
    local b=$!  # env execs python: this is B's pid
    LIMIT=45 train "${name}_A" "$EPOCHS" "$@" -- "${A[@]}"
    kill "$b" 2>/dev/null || true
    wait "$b" 2>/dev/null || true
}

# B of a pair is stopped when A ends: its history.csv holds only the epochs B finished beside A
printf "%-30s %8s %8s %8s %8s %5s %5s\n" setting "A alone" "B alone" "A pair" "B pair" "A %" "B %"
for setting in "libgomp default:GOMP_SPINCOUNT=300000" "project default (runtime.py):" \
               "short spin:GOMP_SPINCOUNT=1000" "passive:OMP_WAIT_POLICY=PASSIVE"; do
    label=${setting%%:*}; read -r -a envs <<< "${setting#*:}"; tag=$(echo "$label" | tr -c 'a-z\n' _)
    train "${tag}_soloA" "$EPOCHS" "${envs[@]}" -- "${A[@]}"
    train "${tag}_soloB" "$EPOCHS" "${envs[@]}" -- "${B[@]}"
    pair "$tag" "${envs[@]}"
    sa=$(speed "$TMP/outs/${tag}_soloA/fold_x"); sb=$(speed "$TMP/outs/${tag}_soloB/fold_x")
    pa=$(speed "$TMP/outs/${tag}_A/fold_x"); pb=$(speed "$TMP/outs/${tag}_B/fold_x")
    printf "%-30s %8s %8s %8s %8s %5s %5s\n" "$label" "$sa" "$sb" "$pa" "$pb" "$(share "$pa" "$sa")" "$(share "$pb" "$sb")"
done

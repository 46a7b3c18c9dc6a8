#!/usr/bin/env bash
# README's TensorBoard screenshot (images/tensorboard.png), made again from nothing:
#   bash scripts/tensorboard_screenshot.sh [OUT_PNG]          (about a minute on 2 CPU cores)
# A short training on synthetic.py's drawn radiographs (80 patients, 88 x 51, 4 epochs, --tensorboard: no
# real radiograph appears), TensorBoard serving it on 127.0.0.1 only, and a headless Chromium taking the
# picture: Debian's `chromium` (apt-get install -y chromium), driven by playwright from a virtual
# environment of its own (SHOT_VENV, made here when missing; playwright downloads no browser of its own,
# and neither belongs in requirements.txt). The viewer opens with its settings pane closed, no
# smoothing and outliers kept (the values as logged), its tag filter on the losses, the learning rate,
# the validation ROC AUC and curves and the training inputs.
set -euo pipefail
OUT=${1:-images/tensorboard.png}
PY=${PYTHON:-.venv/bin/python}
SHOT_VENV=${SHOT_VENV:-${TMPDIR:-/tmp}/hipx-screenshot-venv}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
PORT=${PORT:-6123}
[ -n "$CHROMIUM" ] || { echo "no chromium found: apt-get install -y chromium, or give CHROMIUM=/path/to/it" >&2; exit 1; }
if ! "$SHOT_VENV/bin/python" -c "import playwright" 2>/dev/null; then
  echo "== making $SHOT_VENV with playwright (it drives $CHROMIUM)"
  python3 -m venv "$SHOT_VENV"
  "$SHOT_VENV/bin/pip" install --quiet playwright==1.65.2
fi
TMP=$(mktemp -d)
TB_PID=
cleanup() { if [ -n "$TB_PID" ]; then kill "$TB_PID" 2>/dev/null || true; fi; rm -rf "$TMP"; }
trap cleanup EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "== demo data and a 4-epoch run with --tensorboard"
$PY synthetic.py --out "$TMP/data" --n 80 --seed 0 --size 88 51
$PY main.py --data_dir "$TMP/data" --image_size 88 51 --epoch 4 --batch_size 16 --workers 0 --device cpu \
  --bootstrap 0 --augment flip,crop,rotate --augment_p 0.5 --out_root "$TMP/outs" --save_dir demo --tensorboard

echo "== tensorboard --logdir outs/demo --host 127.0.0.1 --port $PORT"
$PY -m tensorboard.main --logdir "$TMP/outs/demo" --host 127.0.0.1 --port "$PORT" >"$TMP/tensorboard.log" 2>&1 &
TB_PID=$!
URL="http://127.0.0.1:$PORT/"
$PY - "$URL" <<'EOF'
import sys, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("tensorboard did not answer at " + sys.argv[1])
EOF

echo "== headless $CHROMIUM -> $OUT"
FILTER="loss/|optim/lr|val/roc|inputs/radiograph"
"$SHOT_VENV/bin/python" - "$URL" "$FILTER" "$CHROMIUM" "$TMP/shot.png" <<'EOF'
import json, sys, urllib.parse
from playwright.sync_api import sync_playwright

url, tags, chromium, out = sys.argv[1:]
# TensorBoard keeps its viewer settings in localStorage: set them before its page loads
settings = {"timeSeriesSettingsPaneOpened": False, "ignoreOutliers": False, "scalarSmoothing": 0}
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1500, "height": 1060})
    page.add_init_script(f"localStorage.setItem('_tb_global_settings', {json.dumps(json.dumps(settings))})")
    page.goto(f"{url}?tagFilter={urllib.parse.quote(tags)}#timeseries")
    page.wait_for_selector("text=val/roc_pr_curves", timeout=60000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(3000)  # the charts draw after their data arrive
    page.screenshot(path=out)
    browser.close()
EOF
# smaller for the repository: 256 colours are plenty for a page of flat colours and grey radiographs
$PY - "$TMP/shot.png" "$OUT" <<'EOF'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(sys.argv[2], optimize=True)
EOF
echo "wrote $OUT ($(($(stat -c %s "$OUT") / 1024)) KB)"

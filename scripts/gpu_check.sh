#!/usr/bin/env bash
# One prepared CUDA check of labkit on one GPU, well under 9 minutes (issue 11, item 6):
#   1. a virtual environment that inherits the machine's PyTorch, with labkit installed into it (editable);
#   2. the unit tests that run on CUDA (every test parametrized over DEVICES, cuda cases selected by `-k cuda`);
#   3. scripts/gpu_check.py: FP32 and joint ResNet-20 epochs, a joint ResNet-18 step, bf16 autocast,
#      channels_last, SyncBatchNorm under DDP/NCCL, host-device syncs, integer switching;
# and writes gpu_check.json + gpu_check.txt (+ the logs) to the folder given as argument, else $OUT.
#
#   scripts/gpu_check.sh [OUT_DIR]                      # on a GPU machine
#   DEVICE=cpu scripts/gpu_check.sh /tmp/gpu-check-dry  # dry run on the CPU, tiny budgets: tests the script
#
# Environment:
#   DEVICE    cuda (default) or cpu (dry run)
#   PYTHON    the interpreter whose torch to use (default: python3); the venv sees its packages through a .pth
#   VENV      where to make the venv (default /tmp/labkit-gpu-venv; reused when it exists)
#   WHEELS    a folder of wheels for dependencies the machine lacks, installed offline (--no-index)
#   BUDGET_S  seconds for the timing part (default 420; dry run 120)
# Installing: `pip install -e ".[test]"` would fetch the pinned torch; a GPU machine must keep its own CUDA build
# and often has no internet, so labkit goes in with --no-deps and only the missing dependencies (not torch or
# torchvision) are fetched (from WHEELS, else the index, with a short timeout); what is still missing is reported.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-}}"
if [ -z "$OUT_DIR" ]; then
  echo "gpu_check.sh: give the output folder as argument or in \$OUT" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-/tmp/labkit-gpu-venv}"
DRY=()
[ "$DEVICE" = "cpu" ] && DRY=(--dry-run)
BUDGET_S="${BUDGET_S:-$([ "$DEVICE" = "cpu" ] && echo 120 || echo 420)}"
START=$(date +%s)
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
echo "[gpu_check] $(date -Is) device=$DEVICE python=$PYTHON out=$OUT_DIR"

# ---------------------------------------------------------------- 1. venv inheriting $PYTHON's packages
if [ ! -x "$VENV/bin/python" ]; then  # no pip/setuptools of its own: those of $PYTHON come through the .pth
  "$PYTHON" -m venv --without-pip "$VENV" || { echo "[gpu_check] cannot create a venv with $PYTHON" >&2; exit 3; }
fi
PY="$VENV/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PYTHON" -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
  > "$SITE/_labkit_inherited.pth"
HOW="pip install --no-deps --no-build-isolation -e ."
"$PY" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e "$ROOT" \
  || { HOW="not installed (pip failed); labkit imported from the checkout"; }
MISSING="$("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import importlib.metadata as md, re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["test"]
names = [re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0] for spec in wanted]
missing = []
for name in dict.fromkeys(names):
    if name in ("torch", "torchvision"):
        continue  # the machine's own CUDA build is the one to check
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(name)
print(" ".join(missing))
EOF
)"
if [ -n "$MISSING" ]; then
  if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" $MISSING && HOW="$HOW; from WHEELS: $MISSING"
  else
    "$PY" -m pip install -q --timeout 10 --retries 0 $MISSING && HOW="$HOW; from the index: $MISSING"
  fi
  MISSING="$("$PY" -c "
import importlib.metadata as md
left = []
for name in '$MISSING'.split():
    try: md.version(name)
    except md.PackageNotFoundError: left.append(name)
print(' '.join(left))")"
fi
"$PY" -c "
import json, sys, torch
json.dump({'how': sys.argv[1], 'missing': sys.argv[2].split(), 'torch': torch.__version__,
           'cuda_available': torch.cuda.is_available(), 'seconds': int(sys.argv[3])}, open(sys.argv[4], 'w'))
" "$HOW" "$MISSING" "$(( $(date +%s) - START ))" "$OUT_DIR/install.json"
echo "[gpu_check] install: $HOW; still missing: ${MISSING:-none}"

# ---------------------------------------------------------------- 2. the unit tests that use CUDA
cd "$ROOT"
TEST_FILES=$(grep -l '^DEVICES = \["cpu"\]' tests/test_*.py | tr '\n' ' ')
SELECT=(-k "cuda")
[ "$DEVICE" = "cpu" ] && SELECT=(-k "cpu")  # dry run: the same tests on their cpu cases
TEST_START=$(date +%s)
timeout 240 "$PY" -m pytest -q -p no:cacheprovider "${SELECT[@]}" $TEST_FILES > "$OUT_DIR/tests.log" 2>&1
TEST_RC=$?
SUMMARY="$(tail -n 1 "$OUT_DIR/tests.log")"
"$PY" -c "
import json, sys
json.dump({'files': sys.argv[1].split(), 'selection': sys.argv[2], 'exit_code': int(sys.argv[3]),
           'summary': sys.argv[4], 'seconds': int(sys.argv[5])}, open(sys.argv[6], 'w'))
" "$TEST_FILES" "${SELECT[*]}" "$TEST_RC" "$SUMMARY" "$(( $(date +%s) - TEST_START ))" "$OUT_DIR/tests.json"
echo "[gpu_check] tests ($TEST_FILES${SELECT[*]}): $SUMMARY (exit $TEST_RC)"

# ---------------------------------------------------------------- 3. timings and checks
PYTHONUNBUFFERED=1 timeout $(( BUDGET_S + 150 )) "$PY" scripts/gpu_check.py "$OUT_DIR" --device "$DEVICE" \
  --budget-s "$BUDGET_S" "${DRY[@]}"
CHECK_RC=$?
echo "[gpu_check] done in $(( $(date +%s) - START )) s (tests exit $TEST_RC, checks exit $CHECK_RC)"
[ "$TEST_RC" -eq 0 ] && [ "$CHECK_RC" -eq 0 ]

#!/usr/bin/env bash
# GPU figures in one run (< 10 minutes on a CUDA machine), from the repository root:
#
#   benchmarks/gpu/check.sh [--ort-wheel-parts DIR] [--out DIR] [--force] [--seconds S]
#
#  1. (optional) install onnxruntime-gpu from a wheel carried in as <= 60 MiB pieces
#     (DIR/part-* joined with cat; DIR/wheel-name holds the wheel's file name; DIR/sha256, if
#     present, is checked); the CPU `onnxruntime` is uninstalled first (only one may be installed)
#  2. build the demo data (one category, brick), train 2 epochs on CUDA with mixed precision
#  3. export the fp32 and fp16 graphs
#  4. stpm-bench on ONNX Runtime's CUDA provider, batch 1 and 8, against PyTorch CUDA eager in the
#     same run (--torch-baseline); IO binding on/off timed by benchmarks/gpu/gpu_report.py
#  5. stpm-doctor on both graphs (fp16 against the fp32 graph)
#  6. README.md summary; everything under benchmarks/reports/<gpu-name>/
#
# Without an NVIDIA GPU it stops at once (exit 3) and writes nothing. Needs, offline: a Python
# with torch (CUDA build), onnx, onnxruntime-gpu (or the pieces of step 1) and stpm-edge's
# dependencies. PYTHON selects the interpreter (default python3); NVIDIA_SMI the nvidia-smi binary.
set -euo pipefail

PYTHON=${PYTHON:-python3}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
PARTS=""
OUT=""
FORCE=0
SECONDS_PER_CONFIG=5
EPOCHS=2
CATEGORY=brick

die() { local code=$1; shift; echo "check.sh: $*" >&2; exit "$code"; }  # die CODE MESSAGE...

while [ $# -gt 0 ]; do
    case "$1" in
        --ort-wheel-parts) PARTS=${2:?--ort-wheel-parts needs a folder}; shift 2 ;;
        --out) OUT=${2:?--out needs a folder}; shift 2 ;;
        --force) FORCE=1; shift ;;
        --seconds) SECONDS_PER_CONFIG=${2:?--seconds needs a number}; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | cut -c3-; exit 0 ;;
        *) die 2 "unknown argument $1 (see --help)" ;;
    esac
done

[ -f setup.cfg ] && [ -d benchmarks/gpu ] || die 2 "run from the repository root"

# -- 0. a GPU, or stop now -----------------------------------------------------------------------
if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
    die 3 "no NVIDIA GPU: '$NVIDIA_SMI' not found. This script only measures GPU figures;" \
        "nothing was run or written."
fi
if ! GPU_NAME=$("$NVIDIA_SMI" --query-gpu=name --format=csv,noheader 2>&1 | head -n 1) \
    || [ -z "$GPU_NAME" ] || ! "$NVIDIA_SMI" -L >/dev/null 2>&1; then
    die 3 "no NVIDIA GPU: '$NVIDIA_SMI' failed (${GPU_NAME:-no output})." \
        "Nothing was run or written."
fi
SLUG=$(printf '%s' "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
OUT=${OUT:-benchmarks/reports/$SLUG}
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ] && [ "$FORCE" != 1 ]; then
    die 2 "$OUT exists and is not empty: pass --force or another --out"
fi

# -- 1. optional: onnxruntime-gpu from pieces ----------------------------------------------------
if [ -n "$PARTS" ]; then
    [ -f "$PARTS/wheel-name" ] || die 2 "$PARTS/wheel-name missing: it must hold the wheel's name"
    compgen -G "$PARTS/part-*" >/dev/null || die 2 "no $PARTS/part-* pieces"
    WHEEL_DIR=$(mktemp -d)
    WHEEL="$WHEEL_DIR/$(tr -d '[:space:]' < "$PARTS/wheel-name")"
    cat "$PARTS"/part-* > "$WHEEL"      # the glob sorts part-aa, part-ab, ... in order
    if [ -f "$PARTS/sha256" ]; then
        echo "$(tr -d '[:space:]' < "$PARTS/sha256")  $WHEEL" | sha256sum -c - >/dev/null \
            || die 2 "joined wheel does not match $PARTS/sha256"
    fi
    "$PYTHON" -m pip uninstall -y -q onnxruntime >/dev/null 2>&1 || true
    "$PYTHON" -m pip install -q --no-deps "$WHEEL"
    rm -rf "$WHEEL_DIR"
fi

# -- prerequisites -------------------------------------------------------------------------------
"$PYTHON" - <<'EOF' || die 4 "prerequisites missing (above); nothing was measured"
import sys
problems = []
try:
    import torch
    if not torch.cuda.is_available():
        problems.append(f"torch {torch.__version__} sees no CUDA device")
except ImportError:
    problems.append("torch is not installed")
try:
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        problems.append(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                        "(install onnxruntime-gpu, see --ort-wheel-parts)")
except ImportError:
    problems.append("onnxruntime is not installed")
try:
    import stpm_edge.runtime, stpm_edge.export.cli  # noqa: F401
except ImportError as exc:
    problems.append(f"stpm-edge not importable ({exc}): pip install --no-deps --no-build-isolation -e .")
for p in problems:
    print("check.sh:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/check.log") 2>&1
WORK=$(mktemp -d)
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*"; }

step "GPU: $GPU_NAME; work folder $WORK"
"$NVIDIA_SMI" --query-gpu=name,driver_version,memory.total,compute_cap --format=csv

step "demo data ($CATEGORY)"
"$PYTHON" -m stpm_edge.cli.data demo --out "$WORK/data" --categories "$CATEGORY"

step "train $EPOCHS epochs, CUDA, mixed precision (stpm-train's default on CUDA)"
"$PYTHON" -m stpm_edge.cli.train --data "$WORK/data" --category "$CATEGORY" --epochs "$EPOCHS" \
    --batch-size 8 --device cuda --out "$WORK/run" --no-progress
cp "$WORK/run/train_log.jsonl" "$WORK/run/config.yaml" "$OUT/"

step "export fp32 and fp16"
"$PYTHON" -m stpm_edge.export.cli "$WORK/run/best.ckpt" -o "$WORK/fp32.onnx" \
    --calib "$WORK/data/$CATEGORY/train/good"
"$PYTHON" -m stpm_edge.export.cli "$WORK/run/best.ckpt" -o "$WORK/fp16.onnx" --fp16 \
    --calib "$WORK/data/$CATEGORY/train/good"

step "stpm-bench: ORT CUDA vs PyTorch CUDA eager, batch 1 and 8"
"$PYTHON" -m stpm_edge.benchmarks.cli "$WORK/fp32.onnx" "$WORK/fp16.onnx" --backend ort-cuda \
    --batch 1,8 --seconds "$SECONDS_PER_CONFIG" --torch-baseline "$WORK/run/best.ckpt" \
    --out "$OUT/bench" --name "$SLUG" --force

step "IO binding on/off, ORT CUDA, batch 1 and 8"
"$PYTHON" benchmarks/gpu/gpu_report.py iobinding "$WORK/fp32.onnx" "$WORK/fp16.onnx" \
    --backend ort-cuda --batch 1,8 --seconds "$SECONDS_PER_CONFIG" --out "$OUT/iobinding.json"

step "stpm-doctor"
DOCTOR_RC=0
# ort-cuda only: the TensorRT provider is listed by onnxruntime-gpu even without TensorRT's
# libraries, and building its engines would take minutes; TensorRT is not this check's subject.
IMAGES="$WORK/data/$CATEGORY/test/good"
"$PYTHON" -m stpm_edge.runtime.doctor "$WORK/fp32.onnx" --backends ort-cuda --images "$IMAGES" \
    --out "$OUT/doctor-fp32" --force || DOCTOR_RC=$?
"$PYTHON" -m stpm_edge.runtime.doctor "$WORK/fp16.onnx" --reference "$WORK/fp32.onnx" \
    --backends ort-cuda --images "$IMAGES" --out "$OUT/doctor-fp16" --force || DOCTOR_RC=$?

step "summary"
"$PYTHON" benchmarks/gpu/gpu_report.py summary "$OUT" --gpu "$GPU_NAME"
rm -rf "$WORK"
step "done: $OUT (stpm-doctor exit code $DOCTOR_RC)"
exit "$DOCTOR_RC"

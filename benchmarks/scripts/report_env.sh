# Shared settings of the report scripts (sourced, not run): the repository root as working
# directory, the stage to run, the report machine's name, the venv and the calibration images.
# STAGE=export only writes the graphs, STAGE=bench only times them, all (default) does both, so
# the exports may run beside other work and only the timing needs the machine to itself.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
STAGE=${STAGE:-all}
NAME=${NAME:-cpu-epyc-2core}
B=.venv/bin
CAL=${CAL:-demo_out/data/brick/train/good}

# export_variants WORK V...: WORK/V.ckpt exported FP32 (WORK/V_fp32.onnx) and INT8 --target cpu
# (WORK/V_int8.onnx), for each variant V
export_variants() {
  local work=$1 v
  shift
  for v in "$@"; do
    $B/stpm-export "$work/$v.ckpt" -o "$work/${v}_fp32.onnx" --force -q
    $B/stpm-export "$work/$v.ckpt" -o "$work/${v}_int8.onnx" --int8 --target cpu --calib "$CAL" --force -q
  done
}

# bench_variants OUT WORK V...: those graphs timed in one stpm-bench run on ONNX Runtime and
# OpenVINO, batch 1, 2 threads, 3 interleaved rounds, profiled; the report goes to OUT
bench_variants() {
  local out=$1 work=$2 p v graphs=()
  shift 2
  for p in fp32 int8; do for v in "$@"; do graphs+=("$work/${v}_$p.onnx"); done; done
  $B/stpm-bench "${graphs[@]}" \
    --backend ort-cpu,openvino --batch 1 --threads 2 --warmup 10 --seconds "${SECONDS_EACH:-5}" \
    --rounds 3 --profile --profile-iters 20 --name "$NAME" --no-plots --force --out "$out"
}

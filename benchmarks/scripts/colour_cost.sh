#!/usr/bin/env bash
# Regenerates benchmarks/reports/$NAME/colour_map_cost: the colour map's latency (issue 10).
# A checkpoint without the colour map (plain) and with it in each of MODES (fitted post hoc),
# each exported FP32 and INT8 (--target cpu), timed in one stpm-bench run with interleaved rounds.
# CKPT defaults to the demo's brick checkpoint at the default map resolution, as cpu_reports.sh
# writes it (run that first, STAGE=export is enough); the dev extra (openvino) is needed.
# STAGE=export|bench|all (report_env.sh); run the bench stage on a quiet machine.
set -euo pipefail
source "$(dirname "$0")/report_env.sh"
WORK=${WORK:-runs/colour_cost}
MODES=${MODES:-aligned local}
VARIANTS="plain $(printf 'colour_%s ' $MODES)"
mkdir -p "$WORK"
if [ "$STAGE" != bench ]; then
  cp "${CKPT:-runs/cpu_reports/lite0_feature.ckpt}" "$WORK/plain.ckpt"
  for m in $MODES; do
    $B/stpm-colour "$WORK/plain.ckpt" --mode "$m" --out "$WORK/colour_$m.ckpt" --force -q
  done
  for v in $VARIANTS; do
    $B/stpm-export "$WORK/$v.ckpt" -o "$WORK/${v}_fp32.onnx" --force -q
    $B/stpm-export "$WORK/$v.ckpt" -o "$WORK/${v}_int8.onnx" --int8 --target cpu --calib $CAL --force -q
  done
fi
[ "$STAGE" = export ] && exit 0
GRAPHS=()
for p in fp32 int8; do for v in $VARIANTS; do GRAPHS+=("$WORK/${v}_$p.onnx"); done; done
$B/stpm-bench "${GRAPHS[@]}" \
  --backend ort-cpu,openvino --batch 1 --threads 2 --warmup 10 --seconds ${SECONDS_EACH:-5} --rounds 3 --profile \
  --profile-iters 20 --name "$NAME" --no-plots --force --out "benchmarks/reports/$NAME/colour_map_cost"

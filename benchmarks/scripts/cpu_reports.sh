#!/usr/bin/env bash
# Regenerates the CPU speed reports the README's speed table quotes (issue 12):
#   benchmarks/reports/$NAME/tail_efficientnet_lite0   the map tail at input vs feature resolution
#   benchmarks/reports/$NAME/peers_anomalib_resnet18   our resnet18 graphs vs anomalib's STFPM
# Needs: `make demo` done (demo_out/latest/brick/best.ckpt), the dev extra (openvino, nncf), and
# for the peers a throw-away anomalib venv made as benchmarks/peers/anomalib_stfpm.py says
# (PEER_PY, default /work/peers/anomalib-venv/bin/python; skipped when it is missing).
# Run it on a quiet machine: the reports compare configurations measured in one run each.
# STAGE=export|bench|all: see report_env.sh. BACKENDS: the runtimes timed (default
# ort-cpu,openvino,openvino-bf16; drop openvino-bf16 on a CPU without BF16, which it refuses).
set -euo pipefail
source "$(dirname "$0")/report_env.sh"
WORK=${WORK:-runs/cpu_reports}
PEER_PY=${PEER_PY:-/work/peers/anomalib-venv/bin/python}
BACKENDS=${BACKENDS:-ort-cpu,openvino,openvino-bf16}
OUT=benchmarks/reports/$NAME
mkdir -p "$WORK"

if [ "$STAGE" != bench ]; then
# the same checkpoint with another map resolution (thresholds do not change the timing), plain
# STPM as the peers compute it: a colour map (on by default) is dropped; its cost is measured
# by colour_cost.sh
with_resolution() {
  $B/python - "$1" "$2" "$3" <<'PY'
import sys, torch
payload = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
payload["config"]["map_resolution"] = sys.argv[3]
payload.pop("colour_map", None)
torch.save(payload, sys.argv[2])
PY
}

# efficientnet_lite0: the demo's brick checkpoint
with_resolution demo_out/latest/brick/best.ckpt "$WORK/lite0_feature.ckpt" feature
with_resolution demo_out/latest/brick/best.ckpt "$WORK/lite0_input.ckpt" input
# resnet18: random teacher, one epoch (the timing does not depend on the weights)
[ -f "$WORK/r18/best.ckpt" ] || $B/stpm-train --data demo_out/data --category brick \
  --backbone resnet18 --teacher-weights random --epochs 1 --batch-size 8 --colour-map off \
  --out "$WORK/r18" -q
with_resolution "$WORK/r18/best.ckpt" "$WORK/r18_feature.ckpt" feature
with_resolution "$WORK/r18/best.ckpt" "$WORK/r18_input.ckpt" input

export_all() {  # checkpoint prefix
  local ck=$1 p=$2
  $B/stpm-export "${ck}_input.ckpt" -o "$WORK/${p}_fp32_input_res.onnx" --force -q
  $B/stpm-export "${ck}_input.ckpt" -o "$WORK/${p}_int8_cpu_input_res.onnx" --int8 --target cpu --calib $CAL --force -q
  $B/stpm-export "${ck}_feature.ckpt" -o "$WORK/${p}_fp32.onnx" --force -q
  $B/stpm-export "${ck}_feature.ckpt" -o "$WORK/${p}_int8_cpu.onnx" --int8 --target cpu --calib $CAL --force -q
}
export_all "$WORK/lite0" lite0
export_all "$WORK/r18" r18
$B/stpm-export "$WORK/r18_feature.ckpt" -o "$WORK/r18_int8_openvino.onnx" --int8 --target openvino --layout separate --calib $CAL --force -q
$B/stpm-export "$WORK/r18_feature.ckpt" -o "$WORK/r18_int8_openvino_stacked.onnx" --int8 --target openvino --layout stacked --calib $CAL --force -q
# NNCF for lite0 (passes the demo accuracy gate since the openvino target keeps the float head)
$B/stpm-export "$WORK/lite0_feature.ckpt" -o "$WORK/lite0_int8_openvino.onnx" --int8 --target openvino --calib $CAL --force -q
fi
[ "$STAGE" = export ] && exit 0

COMMON=(--batch 1 --threads 2 --warmup 10 --seconds 6 --rounds 3 --matmul-roofline --profile --profile-iters 20
        --recommend --name "$NAME" --force)
$B/stpm-bench "$WORK"/lite0_fp32_input_res.onnx "$WORK"/lite0_fp32.onnx \
  "$WORK"/lite0_int8_cpu_input_res.onnx "$WORK"/lite0_int8_cpu.onnx "$WORK"/lite0_int8_openvino.onnx \
  --backend "$BACKENDS" "${COMMON[@]}" --out "$OUT/tail_efficientnet_lite0"

PEERS=()
if [ -x "$PEER_PY" ]; then
  P=$WORK/peers
  # exported once: a later run reuses the files (delete $P to export them again)
  [ -f "$P/peers.json" ] || "$PEER_PY" benchmarks/peers/anomalib_stfpm.py --out "$P" --images $CAL
  PEERS=(--peer "anomalib_onnx=$P/onnx_export/weights/onnx/model.onnx"
         --peer "anomalib_openvino=$P/openvino_export/weights/openvino/model.xml"
         --peer "anomalib_openvino_int8=$P/openvino_int8_export/weights/openvino/model.xml")
else
  echo "no anomalib venv at $PEER_PY: the resnet18 report is made without peers" >&2
fi
$B/stpm-bench "$WORK"/r18_fp32_input_res.onnx "$WORK"/r18_fp32.onnx \
  "$WORK"/r18_int8_cpu_input_res.onnx "$WORK"/r18_int8_cpu.onnx \
  "$WORK"/r18_int8_openvino.onnx "$WORK"/r18_int8_openvino_stacked.onnx \
  --backend "$BACKENDS" "${PEERS[@]}" "${COMMON[@]}" \
  --out "$OUT/peers_anomalib_resnet18"
$B/python -m stpm_edge.benchmarks.summary "$OUT/tail_efficientnet_lite0" "$OUT/peers_anomalib_resnet18"

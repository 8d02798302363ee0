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
  export_variants "$WORK" $VARIANTS
fi
[ "$STAGE" = export ] && exit 0
bench_variants "benchmarks/reports/$NAME/colour_map_cost" "$WORK" $VARIANTS

#!/usr/bin/env bash
# Regenerates benchmarks/reports/$NAME/score_baseline_cost: the score baseline's latency (issue
# 10). The demo's brick checkpoint with the default colour map (local), without the score baseline
# (colour) and with it (baseline, fitted post hoc by stpm-baseline), each exported FP32 and INT8
# (--target cpu), timed in one stpm-bench run with interleaved rounds. CKPT defaults to the
# checkpoint cpu_reports.sh writes (run that first, STAGE=export is enough); the calibration and
# training images are the demo's (make demo); the dev extra (openvino) is needed.
# STAGE=export|bench|all (report_env.sh); run the bench stage on a quiet machine.
set -euo pipefail
source "$(dirname "$0")/report_env.sh"
WORK=${WORK:-runs/baseline_cost}
VARIANTS="colour baseline"
mkdir -p "$WORK"
if [ "$STAGE" != bench ]; then
  $B/stpm-colour "${CKPT:-runs/cpu_reports/lite0_feature.ckpt}" --mode local --out "$WORK/colour.ckpt" --force -q
  $B/stpm-baseline "$WORK/colour.ckpt" --out "$WORK/baseline.ckpt" --force -q
  export_variants "$WORK" $VARIANTS
fi
[ "$STAGE" = export ] && exit 0
bench_variants "benchmarks/reports/$NAME/score_baseline_cost" "$WORK" $VARIANTS

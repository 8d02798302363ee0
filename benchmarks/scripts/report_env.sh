# Shared settings of the report scripts (sourced, not run): the repository root as working
# directory, the stage to run, the report machine's name, the venv and the calibration images.
# STAGE=export only writes the graphs, STAGE=bench only times them, all (default) does both, so
# the exports may run beside other work and only the timing needs the machine to itself.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
STAGE=${STAGE:-all}
NAME=${NAME:-cpu-epyc-2core}
B=.venv/bin
CAL=${CAL:-demo_out/data/brick/train/good}

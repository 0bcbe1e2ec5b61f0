#!/usr/bin/env bash
# The whole study at one profile through varlib's runner (varlib/runner.py): every model the notebooks need trained
# first, JOBS processes at once in dependency order (classifier, tokenizers, token sets, transformers), then the
# notebooks on the filled cache, also JOBS at once (07_speed last and alone: it times samplers).
#
#   scripts/run_study.sh PROFILE DEVICE OUT_DIR [NOTEBOOK...]     e.g. JOBS=4 scripts/run_study.sh full cuda /tmp/study
#
# No NOTEBOOK: all seven. JOBS defaults to 3: the tokenizer steps are host-bound, and three processes filled the GPU
# that one left idle. Tables and figures go to OUT_DIR/results and OUT_DIR/figures, logs to OUT_DIR/logs (one per job
# under logs/jobs/), one row per job and notebook to OUT_DIR/logs/timings.tsv (with provenance in timings.json).
# A job or notebook that fails is logged, what needs it is skipped by name, and the rest runs.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,6p "$0"; exit 2; }
profile=$1 device=$2 out=$3
shift 3
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m varlib.runner "$profile" --device "$device" --out "$out" --jobs "${JOBS:-3}" "$@"

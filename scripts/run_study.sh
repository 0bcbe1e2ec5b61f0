#!/usr/bin/env bash
# The whole study at one profile through varlib's runner (varlib/runner.py): every model the notebooks need trained
# first, JOBS processes at once in dependency order (classifier, tokenizers, token sets, transformers), then the
# notebooks on the filled cache, also JOBS at once (03, 06 and 07 last, each alone: they time samplers).
#
#   scripts/run_study.sh PROFILE DEVICE OUT_DIR [NOTEBOOK...] [--time-limit S]
#   JOBS=5 scripts/run_study.sh full cuda /tmp/study --time-limit 540
#
# No NOTEBOOK: all seven. JOBS defaults to 3: one full-profile tokenizer leaves an H200 about a fifth idle (0.059 s a
# step, 47 ms of it on the GPU), three at once keep it 95% busy (results/study_logs/full_h200/). DEVICE may list
# several GPUs (cuda:0,cuda:1). With --time-limit the run stops after S seconds and the next one resumes from the cache.
# Tables and figures go to OUT_DIR/results and OUT_DIR/figures, logs to OUT_DIR/logs (one per job under logs/jobs/),
# one row per job and notebook to OUT_DIR/logs/timings.tsv (with provenance in timings.json).
# A job or notebook that fails is logged, what needs it is skipped by name, and the rest runs.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,7p "$0"; exit 2; }
profile=$1 device=$2 out=$3
shift 3
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m varlib.runner "$profile" --device "$device" --out "$out" --jobs "${JOBS:-3}" "$@"

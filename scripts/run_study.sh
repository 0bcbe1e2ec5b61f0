#!/usr/bin/env bash
# Runs notebooks in order at one profile, after building the artifacts they share in parallel.
#
#   scripts/run_study.sh PROFILE DEVICE OUT_DIR NOTEBOOK...     e.g. scripts/run_study.sh full cuda /tmp/study 01 02 04
#
# The tokenizer, the AR baseline's tokenizer and the feature classifier do not depend on each other, and a tokenizer
# step is host-bound (48 ms of GPU work in a 72 ms step on an H100), so training the three at once fills the GPU
# that one alone leaves idle. Each notebook then finds them in the artifact cache ($VARLIB_CACHE). Tables and figures
# go to OUT_DIR/results and OUT_DIR/figures, executed notebooks and logs to OUT_DIR/logs, and one line per notebook
# (name, exit code, wall seconds) to OUT_DIR/logs/timings.tsv. A notebook that fails is logged and the next one runs.
set -uo pipefail
[ $# -ge 4 ] || { sed -n 2,4p "$0"; exit 2; }
profile=$1 device=$2 out=$3
shift 3
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
mkdir -p "$out/logs"

warm() {  # $1: what to build (tokenizer | ar_tokenizer | classifier), through the Study every notebook makes
  "$py" - "$profile" "$device" "$1" <<'EOF'
import sys
from varlib.study import Study

profile, device, what = sys.argv[1:]
study = Study.create(profile, device=device)
if what == "classifier":
    study.classifier()
else:
    study.tokenizer(study.profile.tokenizer if what == "tokenizer" else study.ar_configs()[0])
EOF
}

t0=$(date +%s)
pids=()
for what in tokenizer ar_tokenizer classifier; do
  warm "$what" > "$out/logs/warm_$what.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
printf 'warm-up\t%s\t%s\n' "$status" $(( $(date +%s) - t0 )) >> "$out/logs/timings.tsv"

for nb in "$@"; do
  path=$(ls notebooks/"$nb"*.ipynb | head -n 1)
  name=$(basename "$path" .ipynb)
  t0=$(date +%s)
  "$py" -m papermill --log-output -p profile "$profile" -p device "$device" -p out_dir "$out" \
      "$path" "$out/logs/$name.ipynb" > "$out/logs/$name.log" 2>&1
  printf '%s\t%s\t%s\n' "$name" $? $(( $(date +%s) - t0 )) >> "$out/logs/timings.tsv"
done

#!/usr/bin/env bash
# Runs on each TPU worker: the job, logged to ~/lladax.log, whose log is copied to LOG_DIR
# (gs://...) when it ends, named after the host. Exits with the job's status.
#
#   launch/worker.sh gs://bucket/run/logs -- python -m lladax.main --config ...
set -uo pipefail
[[ $# -ge 3 && "$2" == "--" ]] || { echo "usage: launch/worker.sh LOG_DIR -- COMMAND..." >&2; exit 2; }
log_dir="$1"
shift 2
"$@" 2>&1 | tee "$HOME/lladax.log"
status=${PIPESTATUS[0]}
gcloud storage cp "$HOME/lladax.log" "$log_dir/$(hostname).log" || echo "could not copy the log to $log_dir" >&2
exit "$status"

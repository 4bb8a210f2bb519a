#!/usr/bin/env bash
# Cloud TPU launcher for lladax: create a TPU VM (or a queued resource), install this checkout on
# every worker, start the job on all workers, follow its logs, stop it, delete the TPU.
#
#   launch/tpu.sh create  --name ultra --zone us-east5-a --type v5p-128 [--queued] [--spot]
#   launch/tpu.sh install --name ultra --zone us-east5-a
#   launch/tpu.sh run     --name ultra --zone us-east5-a --bucket gs://my-bucket/ultra128k \
#       --config configs/ultra128k.py -- --config.checkpoint=gs://my-bucket/lladax-8b-base
#   launch/tpu.sh logs    --name ultra --zone us-east5-a [--worker 3]
#   launch/tpu.sh stop | delete ...
#
# Every command takes --dry-run, which prints the gcloud commands instead of running them.
# Settings can also come from the environment: LLADAX_TPU_NAME, LLADAX_ZONE, LLADAX_PROJECT,
# LLADAX_TPU_TYPE, LLADAX_BUCKET. On TPU VMs jax.distributed needs no arguments: every worker
# runs the same command and JAX finds its peers.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# The TPU software image each generation needs.
runtime_for() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime for --type $1; pass --version" ;;
  esac
}

[[ $# -ge 1 ]] || usage 2
command="$1"
shift
name="${LLADAX_TPU_NAME:-}"
zone="${LLADAX_ZONE:-}"
project="${LLADAX_PROJECT:-}"
type="${LLADAX_TPU_TYPE:-}"
bucket="${LLADAX_BUCKET:-}"
version=""
config="configs/ultra128k.py"
worker="0"
queued=0
spot=0
job_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --bucket) bucket="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --worker) worker="$2"; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage 0 ;;
    --) shift; job_args=("$@"); break ;;
    *) die "unknown option $1 (see launch/tpu.sh --help)" ;;
  esac
done
[[ -n "$name" ]] || die "--name (or LLADAX_TPU_NAME) is required"
[[ -n "$zone" ]] || die "--zone (or LLADAX_ZONE) is required"
where=(--zone "$zone")
[[ -z "$project" ]] || where+=(--project "$project")
ssh_all=(gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all)

case "$command" in
  create)
    [[ -n "$type" ]] || die "--type (e.g. v5p-128, v4-128, v5litepod-256) is required to create"
    version="${version:-$(runtime_for "$type")}"
    capacity=()
    [[ "$spot" == 0 ]] || capacity=(--spot)
    if [[ "$queued" == 1 ]]; then
      run gcloud compute tpus queued-resources create "$name" "${where[@]}" --node-id "$name" \
        --accelerator-type "$type" --runtime-version "$version" "${capacity[@]}"
    else
      run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
        --accelerator-type "$type" --version "$version" "${capacity[@]}"
    fi
    ;;
  install)
    tarball="/tmp/lladax-$name.tgz"
    archive_checkout "$tarball"
    run gcloud compute tpus tpu-vm scp "$tarball" "$name:lladax.tgz" "${where[@]}" --worker=all
    run "${ssh_all[@]}" --command \
      'mkdir -p ~/lladax && tar xzf ~/lladax.tgz -C ~/lladax && pip install -q -e ~/lladax[tpu]'
    ;;
  run)
    [[ -n "$bucket" ]] || die "--bucket gs://BUCKET/PATH (or LLADAX_BUCKET) is required: checkpoints and logs go there"
    [[ "$bucket" == gs://* ]] || die "--bucket must be a gs:// path, got $bucket"
    job=$(quote python -m lladax.main --config "$config" --config.workdir="$bucket" "${job_args[@]}")
    # Each worker logs to ~/lladax.log and copies it to the bucket when the job ends.
    remote="cd ~/lladax && nohup launch/worker.sh $bucket/logs -- $job > /dev/null 2>&1 &"
    run "${ssh_all[@]}" --command "$remote"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker="$worker" \
      --command "tail -n 100 -F ~/lladax.log"
    ;;
  stop)
    run "${ssh_all[@]}" --command "pkill -f 'lladax.main' || true"
    ;;
  delete)
    if [[ "$queued" == 1 ]]; then
      run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
    fi
    ;;
  *) die "unknown command $command; use create, install, run, logs, stop or delete" ;;
esac

#!/usr/bin/env bash
# NVIDIA GPU launcher for lladax: one host, a SLURM allocation, or a list of hosts over ssh.
#
#   launch/gpu.sh local [--config FILE] [--workdir DIR] -- --config.train.steps=100
#   launch/gpu.sh slurm --nodes 4 [--partition P] [--time 24:00:00] [--workdir DIR] -- ...
#   launch/gpu.sh ssh   --hosts node1,node2 [--port 6789] [--dir lladax] [--workdir DIR] -- ...
#
# One process per host drives all of that host's GPUs. Under SLURM, jax.distributed finds the
# cluster by itself; over ssh, lladax reads JAX_COORDINATOR_ADDRESS (the first host),
# LLADAX_NUM_PROCESSES and LLADAX_PROCESS_ID. Every command takes --dry-run, which prints what
# would run.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

[[ $# -ge 1 ]] || usage 2
mode="$1"
shift
config="configs/ultra128k.py"
workdir="${LLADAX_WORKDIR:-}"
nodes=""
partition=""
time_limit=""
hosts=""
port="6789"
dir="lladax"  # relative to the remote home directory
job_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --hosts) hosts="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage 0 ;;
    --) shift; job_args=("$@"); break ;;
    *) die "unknown option $1 (see launch/gpu.sh --help)" ;;
  esac
done
job=(python -m lladax.main --config "$config")
[[ -z "$workdir" ]] || job+=(--config.workdir="$workdir")
job+=("${job_args[@]}")
# Let XLA take nearly all GPU memory up front, as large-model training wants.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"

case "$mode" in
  local)
    run env XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION" "${job[@]}"
    ;;
  slurm)
    [[ -n "$nodes" ]] || die "--nodes is required for slurm"
    srun_args=(--nodes "$nodes" --ntasks-per-node 1)
    [[ -z "$partition" ]] || srun_args+=(--partition "$partition")
    [[ -z "$time_limit" ]] || srun_args+=(--time "$time_limit")
    run srun "${srun_args[@]}" env XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION" \
      "${job[@]}"
    ;;
  ssh)
    [[ -n "$hosts" ]] || die "--hosts host1,host2,... is required for ssh"
    IFS=',' read -r -a host_list <<< "$hosts"
    coordinator="${host_list[0]}:$port"
    for i in "${!host_list[@]}"; do
      env_vars=(JAX_COORDINATOR_ADDRESS="$coordinator" LLADAX_NUM_PROCESSES="${#host_list[@]}"
                LLADAX_PROCESS_ID="$i" XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION")
      run ssh "${host_list[$i]}" \
        "cd $(quote "$dir") && nohup $(quote env "${env_vars[@]}" "${job[@]}") > lladax.log 2>&1 &"
    done
    ;;
  *) die "unknown mode $mode; use local, slurm or ssh" ;;
esac

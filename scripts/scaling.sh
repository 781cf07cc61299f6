#!/usr/bin/env bash
# scripts/scaling.sh — strong scaling of data-parallel `chordd train` (docs/distributed.md): the
# same job (the same global batch) with 1, 2, ... N ranks under mpirun, and a table of the mean
# step time, the job's training and rollout throughput, and the speed-up over one rank.
#
# Usage: scripts/scaling.sh [-n MAX_RANKS] [-d DEVICE] [-t THREADS] [-s STEPS] [-z] [-b MB]
#                          [JOB.json]
#   -n  the largest rank count (default: the GPUs on this host with -d cuda, else 2)
#   -d  cpu | cuda (default cpu; cuda: one GPU per rank, NCCL sums the gradients)
#   -t  OpenMP threads per rank with -d cpu (default: the cores / N, at least 1)
#   -s  steps per run (default 30; the first 5 are left out of the means as warm-up)
#   -z  ZeRO-1 (--zero 1) on 2 ranks and more; the table's "moments/rank" column says what each
#       rank kept (rank 0's log line)
#   -b  the gradient bucket size in MiB (--bucket-mb; default chordd's 25, 0: one sum)
#   JOB the job document (default: chordd's embedded demo job, `chordd train --demo`)
# Environment: CHORDD (default build/chordd), MPIRUN_ARGS (more mpirun options: a hostfile, ...).
# Every run writes under a temporary directory, removed at the end. As root, Open MPI's
# OMPI_ALLOW_RUN_AS_ROOT{,_CONFIRM} are set here.
#
# Ready for a multi-GPU host; it has never run on one (no GPU was available to this work).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
chordd=${CHORDD:-$root/build/chordd}
max=""
device=cpu
threads=""
steps=30
zero=0
bucket=""
while getopts "n:d:t:s:zb:" o; do
    case $o in
    n) max=$OPTARG ;;
    d) device=$OPTARG ;;
    t) threads=$OPTARG ;;
    s) steps=$OPTARG ;;
    z) zero=1 ;;
    b) bucket=$OPTARG ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
job=${1:-}
case $device in cpu | cuda) ;; *) echo "scaling: -d cpu or cuda, not $device" >&2; exit 2 ;; esac
command -v mpirun >/dev/null || { echo "scaling: mpirun not found (scripts/install-deps.sh)" >&2; exit 1; }
[ -x "$chordd" ] || { echo "scaling: $chordd not built" >&2; exit 1; }
if [ -z "$max" ]; then
    max=2
    if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
        max=$(nvidia-smi -L | wc -l)
    fi
fi
[ "$steps" -gt 5 ] || { echo "scaling: -s must be above 5" >&2; exit 2; }
[ "$(id -u)" -ne 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_WAIT_POLICY=passive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
jobargs=(--demo)
[ -n "$job" ] && jobargs=("$job")

printf '%s, device %s, %s steps (means over steps 6..%s), job %s%s%s\n' "$(date -u +%FT%TZ)" \
    "$device" "$steps" "$steps" "${job:-the demo}" "$([ $zero = 1 ] && echo ', ZeRO-1')" \
    "${bucket:+, buckets of $bucket MiB}"
printf '| ranks | threads/rank | step (s) | train tokens/s | rollout tokens/s | speed-up | moments/rank |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|\n'
base=""
for ((n = 1; n <= max; n++)); do
    t=${threads:-$(($(nproc) / n > 0 ? $(nproc) / n : 1))}
    out=$tmp/r$n
    distargs=()
    [ "$n" -gt 1 ] && [ "$zero" = 1 ] && distargs+=(--zero 1)
    [ "$n" -gt 1 ] && [ -n "$bucket" ] && distargs+=(--bucket-mb "$bucket")
    mpirun -np "$n" --oversubscribe --bind-to none ${MPIRUN_ARGS:-} \
        "$chordd" train "${jobargs[@]}" --out "$out" --metrics-out "$out.jsonl" --steps "$steps" \
        --device "$device" --threads "$t" --dist-timeout 600 "${distargs[@]}" >"$out.log" 2>&1 ||
        { echo "scaling: $n ranks failed:"; tail -20 "$out.log"; exit 1; }
    read -r step train rollout < <(python3 - "$out.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l)["metrics"] for l in open(sys.argv[1])][5:]
mean = lambda k: sum(r[k] for r in rows) / len(rows)
print(f'{mean("time/step"):.4f} {mean("tokens_per_s/train"):.0f} {mean("tokens_per_s/rollout"):.0f}')
EOF
)
    base=${base:-$step}
    speed=$(python3 -c "print(f'{$base / $step:.2f}')")
    moments=$(sed -n 's/.*ZeRO-1: .*: \([0-9.]* MB\) per rank.*/\1/p' "$out.log" | head -1)
    printf '| %d | %d | %s | %s | %s | %s | %s |\n' "$n" "$t" "$step" "$train" "$rollout" "$speed" \
        "${moments:-all}"
done

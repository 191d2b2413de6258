#!/usr/bin/env bash
# GPU check for ganray, under 5 minutes on one GPU. Prints a table:
#   img/s of the plain PyTorch loop vs ganray (1 Ray Train worker), DCGAN 64x64, batch 256,
#   fp32 vs bf16; FID feature throughput (ganray's classifier; Inception when its weights exist).
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--json FILE]
#
# --device cpu runs the same code path at tiny sizes (CI smoke test, under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
json=gpu_check.json
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ "$device" != cuda && "$device" != cpu ]]; then
  echo "gpu_check.sh: error: --device must be cuda or cpu, got $device" >&2
  exit 2
fi
if [[ "$device" == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
    echo "gpu_check.sh: error: no GPU found (nvidia-smi failed); use --device cpu for the CPU smoke run" >&2
    exit 2
  }
fi
exec timeout 300 python benchmarks/run.py --only gpu --device "$device" --json "$json"

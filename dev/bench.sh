#!/usr/bin/env bash
# Benchmark table (see dev/benchmark.py); set-up as for the tests on first run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ "${1:-}" = "--batch" ]; then  # fpe batch: in-process vs local servers (dev/bench_batch.py)
  shift
  exec python "$FPE_REPO/dev/bench_batch.py" "$@"
fi
exec python "$FPE_REPO/dev/benchmark.py" "$@"

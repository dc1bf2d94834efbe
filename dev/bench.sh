#!/usr/bin/env bash
# Benchmark table (see dev/benchmark.py); set-up as for the tests on first run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python "$FPE_REPO/dev/benchmark.py" "$@"

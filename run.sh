#!/usr/bin/env bash
# Main job: run a workflow headless through ComfyUI's real executor (set-up on first run).
# See `bash run.sh --help`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dev/env.sh"
exec python "$FPE_REPO/dev/headless.py" "$@"

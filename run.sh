#!/usr/bin/env bash
# Main job: an FPE edit headless through ComfyUI's real executor (set-up on first run).
# `bash run.sh --help` lists every option; images go to ./output unless --out.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dev/env.sh"
export FPE_PROG="bash run.sh"
PYTHONPATH="$FPE_REPO${PYTHONPATH:+:$PYTHONPATH}" exec python -m fpe_headless "$@"

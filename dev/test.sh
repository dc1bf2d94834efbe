#!/usr/bin/env bash
# The one test command: set-up (first run only), lint, then the whole suite on a real ComfyUI,
# the browser test of the shipped workflows in its web UI included.
#   bash dev/test.sh                      # 2024 host (provisioned automatically)
#   COMFYUI_PATH=/path/to/ComfyUI bash dev/test.sh   # any other ComfyUI checkout
# Extra arguments go to pytest (e.g. -k executor).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$(dirname "${BASH_SOURCE[0]}")/browser.sh"
cd "$FPE_REPO"
echo ">> ruff"
ruff check .
echo ">> pytest on ComfyUI at $FPE_COMFYUI_HOST"
exec python -m pytest "$@"

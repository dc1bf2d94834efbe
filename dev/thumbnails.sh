#!/usr/bin/env bash
# Make workflows/*.jpg (template browser pictures) on a current ComfyUI: COMFYUI_PATH=... bash dev/thumbnails.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$(dirname "${BASH_SOURCE[0]}")/browser.sh"
exec python "$FPE_REPO/dev/make_thumbnails.py" "$@"

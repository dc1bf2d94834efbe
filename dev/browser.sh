# Sourced by dev/test.sh after env.sh: what the browser test needs, installed once.
# Playwright (Python, pinned) from the registry; Chromium from Debian's `chromium` package, because
# Playwright's own browser download is blocked on a closed network and is never used.
# FPE_CHROMIUM=/path/to/chromium uses another build; FPE_SKIP_BROWSER=1 leaves the browser test out.
if [ "${FPE_SKIP_BROWSER:-0}" != 1 ]; then
  _browser_key="$(sha256sum "$FPE_REPO/dev/requirements-browser.txt" | cut -c1-12)"
  if [ ! -f "$FPE_VENV/.browser-$_browser_key" ]; then
    echo ">> installing Playwright for the browser test" >&2
    _pip -r "$FPE_REPO/dev/requirements-browser.txt"
    touch "$FPE_VENV/.browser-$_browser_key"
  fi

  if [ -z "${FPE_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
      && ! command -v chromium-browser >/dev/null 2>&1; then
    _no_chromium="set FPE_CHROMIUM=/path/to/chromium, or FPE_SKIP_BROWSER=1 to leave the browser test out"
    _as_root=""
    [ "$(id -u)" = 0 ] || _as_root="sudo -n"
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$_as_root" ] || sudo -n true 2>/dev/null; }; then
      echo ">> installing Debian's chromium for the browser test (first run only)" >&2
      _apt_log="$FPE_DEV_CACHE/apt-chromium.log"
      if ! { $_as_root apt-get update -qq \
             && $_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$_apt_log" 2>&1; then
        tail -n 40 "$_apt_log" >&2
        echo "free-prompt-editing dev: could not install chromium (log: $_apt_log); $_no_chromium" >&2
        exit 1
      fi
    else
      echo "free-prompt-editing dev: the browser test needs Debian's chromium (apt-get install chromium, as root);" \
           "$_no_chromium" >&2
      exit 1
    fi
  fi
fi

"""Warnings that change the picture: to the log, and to the ComfyUI page that queued the prompt.

A console line is easy to miss, so a warning that means "your edit will not look right" is also
sent to the browser as a ``free-prompt-editing.warning`` message; the pack's web extension
(``web/fpe_warnings.js``) shows it as a toast. Only the server ComfyUI has already started is used
(never imported here), so nothing happens at import and headless runs just log.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("free-prompt-editing")

MESSAGE = "free-prompt-editing.warning"


def warn(summary: str, detail: str) -> None:
    """Log ``summary: detail`` and show it on the page of the client that queued the prompt."""
    log.warning("FPE: %s: %s", summary, detail)
    server_module = sys.modules.get("server")
    prompt_server = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if prompt_server is None:
        return
    try:
        prompt_server.send_sync(MESSAGE, {"summary": f"FPE: {summary}", "detail": detail},
                                getattr(prompt_server, "client_id", None))
    except Exception as exc:  # a message that cannot be sent must never stop sampling
        log.debug("FPE: could not send the warning to the page: %s", exc)

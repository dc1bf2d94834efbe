"""The one exception type the pack raises for user-facing problems.

Every message names the node input at fault and the fix, so ComfyUI's error dialog is enough
to repair the graph without reading a traceback.
"""

from __future__ import annotations


class FPEError(ValueError):
    """A setting, input or graph wiring that FPE cannot honour."""

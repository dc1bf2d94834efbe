"""ComfyUI node classes of the pack (thin: the logic lives in ``fpe_attention``).

Every node id starts with ``FPE`` so it cannot collide with ComfyUI's built-ins or other packs.
"""

from __future__ import annotations

from contextlib import contextmanager

# The category every node of the pack appears under in ComfyUI's node menu.
CATEGORY = "Free Prompt Editing"


@contextmanager
def as_fpe_error(input_name: str):
    """Re-raise a layer-list problem as an FPEError that names the node input."""
    from ..fpe_attention.errors import FPEError
    from ..fpe_attention.layers import LayerSelectionError

    try:
        yield
    except LayerSelectionError as exc:
        raise FPEError(f"{input_name}: {exc}") from None


from .attention_maps import FPEAttentionQuery, FPESelfAttnComponents, FPEWordHeatmap  # noqa: E402
from .capture import FPESourceCapture  # noqa: E402
from .grid import FPESweepGrid, FPESweepLatent  # noqa: E402
from .images import FPESideBySide  # noqa: E402
from .inject import FPESelfAttnInject  # noqa: E402
from .invert import FPEDDIMInvert, FPEVAEEncodeMean  # noqa: E402
from .nulltext import FPENullTextInvert  # noqa: E402
from .overview import FPELayerOverview  # noqa: E402
from .probe import FPESaveAttentionMaps  # noqa: E402
from .record import FPEAttentionRecord  # noqa: E402
from .replace import FPEAttentionReplace  # noqa: E402
from .schedules import FPEOfficialDDIMSigmas  # noqa: E402

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "FPESourceCapture": FPESourceCapture,
    "FPESelfAttnInject": FPESelfAttnInject,
    "FPEOfficialDDIMSigmas": FPEOfficialDDIMSigmas,
    "FPESideBySide": FPESideBySide,
    "FPEVAEEncodeMean": FPEVAEEncodeMean,
    "FPEDDIMInvert": FPEDDIMInvert,
    "FPEAttentionReplace": FPEAttentionReplace,
    "FPEAttentionRecord": FPEAttentionRecord,
    "FPEWordHeatmap": FPEWordHeatmap,
    "FPESelfAttnComponents": FPESelfAttnComponents,
    "FPEAttentionQuery": FPEAttentionQuery,
    "FPENullTextInvert": FPENullTextInvert,
    "FPESweepLatent": FPESweepLatent,
    "FPESweepGrid": FPESweepGrid,
    "FPELayerOverview": FPELayerOverview,
    "FPESaveAttentionMaps": FPESaveAttentionMaps,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "FPESourceCapture": "FPE Source Capture",
    "FPESelfAttnInject": "FPE Self-Attn Inject",
    "FPEOfficialDDIMSigmas": "FPE Official DDIM Sigmas",
    "FPESideBySide": "FPE Side by Side",
    "FPEVAEEncodeMean": "FPE VAE Encode (Mean)",
    "FPEDDIMInvert": "FPE DDIM Invert",
    "FPEAttentionReplace": "FPE Attention Replace",
    "FPEAttentionRecord": "FPE Attention Record",
    "FPEWordHeatmap": "FPE Word Heatmap",
    "FPESelfAttnComponents": "FPE Self-Attn Components",
    "FPEAttentionQuery": "FPE Attention Query",
    "FPENullTextInvert": "FPE Null-Text Invert",
    "FPESweepLatent": "FPE Sweep Latent",
    "FPESweepGrid": "FPE Sweep Grid",
    "FPELayerOverview": "FPE Layer Overview",
    "FPESaveAttentionMaps": "FPE Save Attention Maps",
}

"""The pack's node registry: which node classes ComfyUI loads, under which ids and names.

Every node id starts with ``FPE`` so it cannot collide with ComfyUI's built-ins or other packs; each
class declares its menu name (``DISPLAY_NAME``) and sub-category (``CATEGORY``, ``common.py``). The
node files are thin: the logic lives in ``fpe_attention``.
"""

from __future__ import annotations

from .attention_maps import FPEAttentionQuery, FPESelfAttnComponents, FPEWordHeatmap
from .capture import FPESourceCapture
from .dit_inject import FPEMMDiTInject
from .flow_invert import FPEFlowInvert
from .grid import FPESweepGrid, FPESweepLatent
from .images import FPESideBySide
from .inject import FPESelfAttnInject
from .invert import FPEDDIMInvert, FPEVAEEncodeMean
from .local_edit import FPELocalEdit, FPELocalMask
from .nulltext import FPENullTextInvert
from .overview import FPELayerOverview
from .probe import FPESaveAttentionMaps
from .record import FPEAttentionRecord
from .replace import FPEAttentionReplace
from .schedules import FPEOfficialDDIMSigmas

# Node id -> class, in menu order. Ids are what saved workflows store: never rename one.
NODE_CLASS_MAPPINGS: dict[str, type] = {cls.__name__: cls for cls in (
    FPESourceCapture, FPESelfAttnInject, FPEMMDiTInject, FPELocalEdit, FPELocalMask, FPEOfficialDDIMSigmas,
    FPESideBySide, FPEVAEEncodeMean, FPEDDIMInvert, FPEFlowInvert, FPEAttentionReplace, FPEAttentionRecord,
    FPEWordHeatmap, FPESelfAttnComponents, FPEAttentionQuery, FPENullTextInvert, FPESweepLatent, FPESweepGrid,
    FPELayerOverview, FPESaveAttentionMaps)}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}

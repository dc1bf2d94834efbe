"""Free-Prompt-Editing (FPE) for ComfyUI.

Liu et al., "Towards Understanding Cross and Self-Attention in Stable Diffusion for Text-Guided
Image Editing", CVPR 2024. Importing this package only defines node classes: it loads no model,
starts no work and patches nothing. Models are patched on a ``model.clone()`` when a node runs.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# The web extension that shows the pack's warnings on the page (web/fpe_warnings.js).
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

"""ComfyUI node classes of the pack (thin: the logic lives in ``fpe_attention``).

Every node id starts with ``FPE`` so it cannot collide with ComfyUI's built-ins or other packs.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

# The category every node of the pack appears under in ComfyUI's node menu.
CATEGORY = "Free Prompt Editing"

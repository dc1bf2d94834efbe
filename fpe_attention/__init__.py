"""Core of the pack: plain torch plus a thin layer over ComfyUI's public model-patch API.

No node classes live here, so the core can be used and tested apart from the node layer.
"""

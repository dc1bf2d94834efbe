"""Running ComfyUI: booted headless in this process with the pack loaded (``host``), prompts through its real
executor (``executor``), workflows converted (``workflow``), tiny demo models, and runners (``jobs``, ``remote``)."""

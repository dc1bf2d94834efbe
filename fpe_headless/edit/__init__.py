"""``fpe edit``, the README's main job (``bash run.sh``, ``python -m fpe_headless``): one FPE edit of a workflow
through ComfyUI's real executor (``main_job``)."""

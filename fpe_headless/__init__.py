"""The pack's command line, ``fpe`` (``python -m fpe_headless``; ``bash run.sh`` is its main job): ComfyUI run
headless with this pack, one package per command.

Nothing here runs when ComfyUI loads the pack (its nodes never import this package), and importing
it starts nothing: ComfyUI is booted only by ``comfy.host.boot``, in a process of its own.

* ``cli``: the ``fpe`` dispatcher (``__main__``: ``python -m fpe_headless``).
* ``comfy``: running ComfyUI: boot it in this process (``host``), run prompts through its real executor
  (``executor``), UI- to API-format workflows (``workflow``), the tiny demo models (``tiny_models``), and
  the runners of many prompts, in this process (``jobs``) or on ComfyUI servers (``remote``).
* ``edit``: ``fpe edit``, the main job (``bash run.sh``): a headless FPE edit of a workflow (``main_job``).
* ``batch``: ``fpe batch``, ``fpe eval``, ``fpe datasets`` (``cli``): datasets edited and scored (``batch``,
  ``datasets``, ``metrics``, ``report``).
* ``probe``: ``fpe probe`` (``cli``): the paper's probing analysis (``build``, ``store``, ``train``, ``report``).
* Shared by the commands: ``shared`` (the one-line user error, checks made before ComfyUI starts, booting
  it for a command, the progress bar), ``workflows`` (the shipped workflows, a command line's settings put
  into a prompt), ``drawing`` (8- and 16-bit pictures read as RGB, fonts, captions, grids), ``fingerprint``
  (a weights file in short).
"""

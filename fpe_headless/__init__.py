"""Running ComfyUI headless with this pack: the README's main job (``bash run.sh``), and the base of
the command line to come.

Nothing here runs when ComfyUI loads the pack (its nodes never import this package), and importing
it starts nothing: ComfyUI is booted only by ``host.boot``, in a process of its own.

* ``host``: boot a real ComfyUI in this process (CPU or GPU), load this pack through ComfyUI's own
  custom-node loader, keep its built-in extras' import noise to one line.
* ``executor``: run API-format prompts through ComfyUI's real validation and PromptExecutor, with a
  recording stand-in for the web server; failures as one line naming the node.
* ``workflow``: convert UI-format workflows (what the web page saves) to API-format prompts.
* ``tiny_models``: the seeded tiny checkpoints of the smoke demo (and of the tests).
* ``main_job``: ``bash run.sh``, a headless FPE edit of a shipped workflow.
"""

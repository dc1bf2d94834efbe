"""The demo model: a small SD1.x-layout model trained on a drawn world of coloured shapes.

``world`` draws the scenes and reads pictures back (objects, colours, shapes); ``vae`` holds the
hand-set TAESD; ``checkpoint`` says where the committed file lives; ``lab`` runs edits of the world
through ComfyUI's executor and scores them. ``dev/train_demo_model.py`` trains it and
``dev/measure_demo_model.py`` measures it (docs/demo-model.md).
"""

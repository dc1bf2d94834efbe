"""``fpe probe`` (``cli``): the paper's probing analysis: attention-map datasets built through ComfyUI (``build``)
and stored (``store``), a probe trained per layer (``train``), tables and a heatmap (``report``)."""

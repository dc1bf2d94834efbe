"""What a user sees of the nodes: names, menu sub-categories, a tooltip on every input and output."""

from __future__ import annotations

from fpe_harness.host import pack_module

EXPECTED = {
    "FPESourceCapture": "FPE Source Capture",
    "FPESelfAttnInject": "FPE Self-Attn Inject",
    "FPEMMDiTInject": "FPE MMDiT Inject",
    "FPELocalEdit": "FPE Local Edit",
    "FPELocalMask": "FPE Local Mask",
    "FPEOfficialDDIMSigmas": "FPE Official DDIM Sigmas",
    "FPESideBySide": "FPE Side by Side",
    "FPEVAEEncodeMean": "FPE VAE Encode (Mean)",
    "FPEDDIMInvert": "FPE DDIM Invert",
    "FPEFlowInvert": "FPE Flow Invert",
    "FPENullTextInvert": "FPE Null-Text Invert",
    "FPEAttentionReplace": "FPE Attention Replace",
    "FPESweepLatent": "FPE Sweep Latent",
    "FPESweepGrid": "FPE Sweep Grid",
    "FPEAttentionRecord": "FPE Attention Record",
    "FPEWordHeatmap": "FPE Word Heatmap",
    "FPESelfAttnComponents": "FPE Self-Attn Components",
    "FPEAttentionQuery": "FPE Attention Query",
    "FPELayerOverview": "FPE Layer Overview",
    "FPESaveAttentionMaps": "FPE Save Attention Maps",
}
# The node menu: "Free Prompt Editing" and one sub-category per task.
MENU = {
    "edit": {"FPESourceCapture", "FPESelfAttnInject", "FPEMMDiTInject", "FPELocalEdit", "FPELocalMask",
             "FPEOfficialDDIMSigmas"},
    "real photos": {"FPEVAEEncodeMean", "FPEDDIMInvert", "FPEFlowInvert", "FPENullTextInvert"},
    "compare": {"FPEAttentionReplace", "FPESweepLatent", "FPESweepGrid", "FPESideBySide"},
    "attention maps": {"FPEAttentionRecord", "FPEWordHeatmap", "FPESelfAttnComponents", "FPEAttentionQuery",
                       "FPELayerOverview"},
    "probing": {"FPESaveAttentionMaps"},
}


def test_display_names_category_and_tooltips():
    pack = pack_module()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == EXPECTED
    assert set(pack.NODE_CLASS_MAPPINGS) == set(EXPECTED)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.DISPLAY_NAME == EXPECTED[node_id], node_id  # declared on the class, the registry reads it
        menu = next(sub for sub, ids in MENU.items() if node_id in ids)
        assert cls.CATEGORY == f"Free Prompt Editing/{menu}", node_id
        assert cls.DESCRIPTION, node_id
        declared = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in (declared.get(section) or {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert len(options.get("tooltip", "")) > 20, f"{node_id}.{name} has no useful tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), node_id
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), node_id


def test_capture_defaults_are_the_official_example():
    declared = pack_module().NODE_CLASS_MAPPINGS["FPESourceCapture"].INPUT_TYPES()["required"]
    defaults = {name: spec[1].get("default") for name, spec in declared.items() if len(spec) > 1}
    assert (defaults["seed"], defaults["steps"], defaults["cfg"], defaults["sampler_name"]) == (42, 50, 7.5, "ddim")
    inject = pack_module().NODE_CLASS_MAPPINGS["FPESelfAttnInject"].INPUT_TYPES()["required"]
    assert (inject["layers"][1]["default"], inject["start"][1]["default"], inject["end"][1]["default"],
            inject["branches"][1]["default"]) == ("official", 0.0, 0.8, "cond only")

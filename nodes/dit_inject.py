"""FPE MMDiT Inject: FPE on Flux.1, SD3 and SD3.5 (joint attention) for the target sampler."""

from __future__ import annotations

from ..fpe_attention.dit_blocks import DEFAULT_WINDOW, PRESETS
from ..fpe_attention.dit_inject import choose_blocks, inject_dit_model, plan_dit_sweep, table_of
from ..fpe_attention.inject import BRANCHES
from ..fpe_attention.joint_attention import MODES
from .common import EDIT


class FPEMMDiTInject:
    DISPLAY_NAME = "FPE MMDiT Inject"
    CATEGORY = EDIT
    FUNCTION = "inject"
    RETURN_TYPES = ("MODEL", "FPE_SWEEP_LABELS")
    RETURN_NAMES = ("model", "sweep_labels")
    OUTPUT_TOOLTIPS = ("The MMDiT with the edit attached: sample the target prompt with it using the capture's seed, "
                       "steps, sampler, scheduler and guidance (real photos: SamplerCustomAdvanced from FPE Flow "
                       "Invert's inverted_noise and sigmas, sampler euler).",
                       "The sweep's row and column titles, for FPE Sweep Grid and FPE Sweep Latent (without a sweep: "
                       "one image titled with the setting).")
    DESCRIPTION = ("Free-Prompt-Editing on MMDiT models (Flux.1, SD3, SD3.5): in the chosen blocks and first steps, "
                   "the target's image tokens attend with the source's image map, so the edit keeps the source "
                   "layout. The source's queries and keys come from its record, or its rows run beside the "
                   "target's in the same model call (replay).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The Flux.1 / SD3 / SD3.5 model the capture used (LoRAs included); a "
                                               "patched clone is returned."}),
                "fpe_source": ("FPE_SOURCE", {"tooltip": "From FPE Source Capture (generated images) or FPE Flow Invert "
                                                         "(photos) run on this model."}),
                "mode": (list(MODES), {
                    "default": MODES[0],
                    "tooltip": "'image map' (FPE itself): the target's image queries take the source's image-to-image "
                               "attention logits, their text logits stay the target's, one softmax, the target's "
                               "values. 'image Q,K': the target's image queries and keys become the source's (Shin et "
                               "al.'s recommended variant; the text tokens then see the source's image keys too). "
                               "SD3.5-Medium's image self-attention blocks always take the UNet operation."}),
                "blocks": (list(PRESETS), {
                    "default": "all",
                    "tooltip": "Blocks to edit. 'all': every joint attention (Flux double + single, SD3 joint). "
                               "'double-stream only': Flux's double-stream blocks, SD3's joint blocks. 'single-stream "
                               "only': Flux's single-stream blocks (ConsistEdit's choice). 'late single-stream': Flux single "
                               "blocks 20-37 (RF-Solver-Edit's). 'image self-attention': SD3.5-Medium's image-only "
                               "self-attention (MMDiT-X). 'custom': custom_blocks."}),
                "custom_blocks": ("STRING", {
                    "default": "double0-18", "multiline": False,
                    "tooltip": "Block list used when blocks is 'custom': double3 · single10-20 · joint5 · self0-12 · a "
                               "kind alone for all its blocks (double), items separated by commas."}),
                "start": ("FLOAT", {"default": DEFAULT_WINDOW[0], "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "First edited step as a fraction: step i is edited iff int(steps*start) "
                                               "<= i < int(steps*end). start = end turns the edit off."}),
                "end": ("FLOAT", {"default": DEFAULT_WINDOW[1], "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "End of the edited steps. 0.2 (the first 20 %, Shin et al.'s setting for "
                                             "MMDiT editing): flow models fix the layout early. Higher keeps more of "
                                             "the source; must not exceed the capture's store_end."}),
                "branches": (list(BRANCHES), {
                    "default": "cond only",
                    "tooltip": "'cond only': only the target's conditional rows are edited (Flux dev runs only "
                               "those). 'cond + uncond' also edits the unconditional rows (cfg > 1; needs store_rows "
                               "'cond + uncond')."}),
            },
            "optional": {
                "sweep": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Settings sweep in one batched run (empty: none), as on FPE Self-Attn Inject: e.g. "
                               "'end=0.1,0.2,0.3; layers=all,\"double0-18\"' (layers values: block presets or quoted "
                               "block lists). Each combination is one image of the target batch: connect the target "
                               "latent through FPE Sweep Latent."}),
            },
        }

    def inject(self, model, fpe_source, mode, blocks, custom_blocks, start, end, branches, sweep=""):
        keys, label = choose_blocks(model, blocks, custom_blocks)
        settings, labels = plan_dit_sweep(table_of(model), sweep, blocks=keys, blocks_label=label, start=start, end=end,
                                          custom_blocks=custom_blocks)
        patched = inject_dit_model(model, fpe_source, blocks=keys, start=start, end=end, mode=mode, branches=branches,
                                   sweep=settings)
        return (patched, labels)

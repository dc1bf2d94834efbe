"""Cross-attention map replacement (Prompt-to-Prompt style), for the paper's comparisons (Figs. 4, 5, 10, 11).

The paper's finding: replacing the target's cross-attention maps by the source's carries the source's
category and colour into the edit, while replacing self-attention maps (FPE) keeps the layout without
that leak. FPE Attention Replace lets users see it: ``self`` is FPE Self-Attn Inject (``inject_model``),
``cross`` replaces the cross-attention maps of the target's cond rows in the chosen layers and steps,
``self + cross`` both.

How. A capture with ``store_cross`` keeps, per stored evaluation chunk and attn2 layer, the source's
attn2 input ``n`` and the chunk's text context (``CaptureRecorder.record_cross``). In the edit an attn2
*replace* function (ComfyUI's public ``set_model_attn2_replace``; it receives the projected target q, k,
v) projects the source's ``n`` and context with the same layer's ``to_q``/``to_k`` (the module is looked
up once, when the node runs, from the UNet by its block key) and, for the edited rows:

* all tokens: Attention(Q_src, K_src, V_tgt) on the host's own kernel (the map replacement, as the
  Inject does for self-attention); word-swap prompts of equal token counts only, so column j of the
  source's map belongs to token j of the target;
* named words: the maps built explicitly per head (tokens x context, small), the target's map with the
  named words' columns taken from the source's map (at the word's positions in each prompt), times V_tgt.

Every other row, step and layer runs the host's attention on the host's own q, k, v. Only the cond rows
are edited (as Prompt-to-Prompt's controller does). ComfyUI holds one attn2 replace per block: a model
that already has one there (another pack's) is refused with its name rather than silently overridden.
The evaluation pairing is the Inject's: the replace locates its UNet call on the Inject's clock, which
the block's attn1 patch (run before attn2) has already advanced.
"""

from __future__ import annotations

import torch

from .architecture import transformer_layers, unet_of
from .errors import FPEError
from .evaluations import COND
from .hooks import Shared
from .host_versions import host_attention
from .inject import inject_model
from .layers import LayerKey, LayerSelection, layer_key
from .prompt_words import PromptTokens, encode_text, encodes_alike, prompt_tokens, word_columns
from .source import FPESource, reject_chained_inject
from .validate import check_number

MODES = ("self", "cross", "self + cross")
TOKENS = ("all tokens", "named words")


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


# --- the map ---------------------------------------------------------------------------------------

def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    rows, tokens, channels = t.shape
    return t.reshape(rows, tokens, heads, channels // heads).transpose(1, 2)


def cross_maps(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(QKᵀ/√d) per head, in float32: [rows, heads, tokens, context]."""
    qh, kh = _heads(q.float(), heads), _heads(k.float(), heads)
    return torch.softmax(qh @ kh.transpose(-1, -2) * (q.shape[-1] // heads) ** -0.5, dim=-1)


def replaced_map(q_t, k_t, q_s, k_s, heads: int, cols_t, cols_s) -> torch.Tensor:
    """The target's cross-attention map with columns ``cols_t`` taken from the source's columns ``cols_s``."""
    weights = cross_maps(q_t, k_t, heads)
    weights[..., list(cols_t)] = cross_maps(q_s, k_s, heads)[..., list(cols_s)]
    return weights


def apply_map(weights: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    rows, tokens = weights.shape[0], weights.shape[2]
    out = weights @ _heads(v.float(), heads)
    return out.transpose(1, 2).reshape(rows, tokens, v.shape[-1]).to(v.dtype)


def attn2_modules(diffusion_model) -> dict[LayerKey, torch.nn.Module]:
    """Each transformer layer's cross-attention module, under the key its patches see (``layers``)."""
    return {key: transformer.attn2 for key, transformer, _ in transformer_layers(diffusion_model)
            if getattr(transformer, "attn2", None) is not None}


def _fit(context: torch.Tensor, length: int, own: int, what: str) -> torch.Tensor:
    """``context`` (its prompt ``own`` tokens long, possibly tiled by ComfyUI's batching) at ``length`` tokens."""
    if context.shape[1] % own:
        raise FPEError(
            f"{what}: the {'source' if what == 'source_text' else 'target'}'s text context has {context.shape[1]} "
            f"tokens, which does not fit the prompt typed in {what} ({own} tokens): give source_text and target_text "
            f"the prompts the source and the target were encoded from")
    base = context[:, :own]
    if length % own:
        raise FPEError(f"{what}: the prompts' contexts ({own} vs {length} tokens) do not pair")
    return base.repeat(1, length // own, 1) if length != own else base


class CrossReplace(Shared):
    """attn2 replace function: the target's cond rows take the source's cross-attention map."""

    def __init__(self, source: FPESource, clock, modules: dict, layers: frozenset, window: tuple[int, int],
                 source_tokens: PromptTokens, target_tokens: PromptTokens, columns: tuple[list, list] | None,
                 target_encoding: torch.Tensor):
        self.source = source
        self.clock = clock  # the Inject's: its attn1 patch locates each UNet call first
        self.modules = modules
        self.layers = layers
        self.window = window
        self.source_tokens = source_tokens
        self.target_tokens = target_tokens
        self.columns = columns  # None: all tokens
        self.target_encoding = target_encoding  # target_text as the CLIP encodes it, [1, T, C]
        self._projected: dict = {}  # (module id, device, dtype) -> target_text's keys in that layer

    def check_target_text(self, module, k: torch.Tensor, rows: slice) -> None:
        """The target's keys must be target_text's, projected: a stale target_text would pick another word's
        columns (named words) or pass a word swap that is not one (all tokens)."""
        place = (id(module), k.device, k.dtype)
        if place not in self._projected:
            self._projected[place] = module.to_k(self.target_encoding.to(device=k.device, dtype=k.dtype))
        if not encodes_alike(self._projected[place], k[rows][:1]):
            raise FPEError(
                f"target_text: {_quote(self.target_tokens.text)} does not encode to the target sampler's prompt "
                f"(its text context differs), so its words' columns would be another prompt's: type the target "
                f"prompt exactly as encoded for the target sampler, with the CLIP that encoded it")

    def __call__(self, q, k, v, extra_options):
        layer = layer_key(extra_options)
        module = self.modules[layer]
        heads = extra_options.get("n_heads") or module.heads
        call = self.clock.locate(extra_options, q.shape[0])
        first, stop = self.window
        if layer not in self.layers or call.step is None or not first <= call.step < stop:
            return host_attention(q, k, v, heads, module, extra_options)
        edits = []
        for chunk in call.chunks:
            if chunk.kind != COND:
                continue
            key, _ = self.source.resolve(chunk.key, call.step)
            stored = self.source.cross_entries.get(key, {}).get(layer)
            context = self.source.cross_context.get(key)
            if stored is None or context is None:
                raise FPEError(
                    f"fpe_source holds no cross-attention record for layer {'.'.join(map(str, layer))} at step "
                    f"{call.step}: set {self.source.maker}'s store_cross to 'all layers' (now "
                    f"'{self.source.cross_setting}') and its store_end to cover cross_end")
            rows = chunk.rows.stop - chunk.rows.start
            if stored.shape[0] not in (1, rows) or stored.shape[1] != q.shape[1]:
                raise FPEError(
                    f"the target's cross-attention at layer {layer} has {rows} rows x {q.shape[1]} tokens, the "
                    f"source's record {stored.shape[0]} x {stored.shape[1]}: give the target the capture's latent size "
                    f"and a batch of 1 or the source's")
            n_src = stored.to(device=q.device, dtype=q.dtype).expand(rows, -1, -1)
            ctx_src = context.to(device=q.device, dtype=q.dtype).expand(rows, -1, -1)
            edits.append((chunk.rows, n_src, ctx_src))
        if not edits:
            return host_attention(q, k, v, heads, module, extra_options)
        if call.step == first:  # once per layer and run (every run passes its window's first step)
            for rows, _, _ in edits:
                self.check_target_text(module, k, rows)
        length, own_t, own_s = k.shape[1], self.target_tokens.length, self.source_tokens.length
        if self.columns is None:  # Attention(Q_src, K_src, V_tgt) on the host's kernel
            q_edit, k_edit = q.clone(), k.clone()
            for rows, n_src, ctx_src in edits:
                q_edit[rows] = module.to_q(n_src)
                k_edit[rows] = module.to_k(_fit(ctx_src, length, own_s, "source_text"))
            return host_attention(q_edit, k_edit, v, heads, module, extra_options)
        out = host_attention(q, k, v, heads, module, extra_options)
        cols_t, cols_s = self.columns
        for rows, n_src, ctx_src in edits:
            k_t = _fit(k[rows], own_t, own_t, "target_text")
            v_t = _fit(v[rows], own_t, own_t, "target_text")
            k_s = module.to_k(_fit(ctx_src, own_s, own_s, "source_text"))
            weights = replaced_map(q[rows], k_t, module.to_q(n_src), k_s, heads, cols_t, cols_s)
            out[rows] = apply_map(weights, v_t, heads).to(out.dtype)
        return out


def find_inject_patch(model):
    patches = model.model_options.get("transformer_options", {}).get("patches", {})
    for patch in patches.get("attn1_patch", []):
        if getattr(patch, "fpe_inject", False):
            return patch
    raise RuntimeError("FPE: the inject patch is missing from the model inject_model returned")


def existing_attn2_replace(model, keys) -> str | None:
    """A description of another attn2 replace function already set on one of ``keys``' blocks."""
    replaced = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key in sorted(keys):
        for k in (key, key[:2]):
            if k in replaced:
                fn = replaced[k]
                name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
                module = getattr(fn, "__module__", None) or type(fn).__module__
                return f"block {'.'.join(map(str, key))} ({module}.{name})"
    return None


def check_cross_source(source: FPESource) -> None:
    if source.replay is not None:
        chosen = "storage 'auto' fell back to replay (the record did not fit)" if source.auto_replay else \
            "storage 'replay' keeps no record"
        raise FPEError(f"mode 'cross' needs the source's cross-attention record, but {source.maker}'s {chosen}: "
                       f"capture with storage 'auto' or 'cpu' and store_cross 'on' (or a shorter store_end / fewer "
                       f"layers so it fits)")
    if not source.cross_layers:
        raise FPEError(f"mode 'cross' needs the source's cross-attention record: set {source.maker}'s store_cross "
                       f"to 'on' or 'all layers' (it is 'off'), or use mode 'self'")


def cross_patch(model, patched, source: FPESource, *, clock, selection: LayerSelection,
                start: float, end: float, clip, source_text: str, target_text: str, tokens: str, words: str):
    """Set the cross-attention replacement on ``patched`` (a clone carrying the Inject's patch)."""
    check_cross_source(source)
    entries = len(source.structure.positive) if source.structure is not None else 1
    if entries > 1:  # source_text / target_text name one prompt's tokens; several entries hold several prompts
        raise FPEError(
            f"cross-attention modes replace one prompt's maps, but {source.maker}'s positive has {entries} entries "
            f"(Conditioning (Combine), Set Area or Set Mask), whose prompts source_text and target_text cannot all "
            f"name: give each side one CLIP Text Encode for the cross modes, or use mode 'self', which pairs "
            f"entries one by one")
    start = check_number("cross_start", start, 0.0, 1.0)
    end = check_number("cross_end", end, 0.0, 1.0)
    if start > end:
        raise FPEError(f"cross_start ({start}) is after cross_end ({end}): set cross_start below cross_end")
    if tokens not in TOKENS:
        raise FPEError(f"tokens: unknown value {tokens!r}; choose one of {', '.join(TOKENS)}")
    window, layers = source.covered_edit(selection, start, end, cross=True)
    if clip is None:
        raise FPEError("clip: mode 'cross' needs the CLIP model that encoded the prompts (to find their tokens): "
                       "connect Load Checkpoint's CLIP")
    src, tgt = prompt_tokens(clip, source_text), prompt_tokens(clip, target_text)
    contexts = [t for key, t in source.cross_context.items() if key.kind == COND]
    recorded = {int(t.shape[1]) for t in contexts}
    if any(length % src.length for length in recorded):
        raise FPEError(
            f"source_text: it encodes to {src.length} context tokens, but the source's prompt had "
            f"{', '.join(map(str, sorted(recorded)))}: type the source prompt's text exactly as it was encoded")
    # The same token count is not the same prompt: a stale source_text would take another word's columns.
    encoded = encode_text(clip, source_text)
    if contexts and not any(encodes_alike(encoded, t) for t in contexts):
        raise FPEError(
            f"source_text: {_quote(source_text)} does not encode to the prompt {source.maker} sampled (its text "
            f"context differs), so its words' columns would be another prompt's: type the source prompt exactly as "
            f"encoded for the capture, and connect the CLIP that encoded it (after any CLIP Set Last Layer or LoRA)")
    if tokens == "all tokens":
        if src.count != tgt.count:
            raise FPEError(
                f"tokens 'all tokens' pairs the maps' columns position by position, which needs a word swap: "
                f"source_text has {src.count} tokens, target_text {tgt.count}. Make the prompts the same length in "
                f"tokens, or set tokens to 'named words'")
        columns = None
    else:
        columns = word_columns(src, tgt, words)
    taken = existing_attn2_replace(patched, layers)
    if taken is not None:
        raise FPEError(
            f"model: another node already replaces cross-attention at {taken}; ComfyUI keeps one replacement per "
            f"block, so FPE Attention Replace would override it. Apply that node after FPE Attention Replace only "
            f"in mode 'self', or leave it out for the comparison")
    modules = attn2_modules(unet_of(model))
    replace = CrossReplace(source, clock, modules, layers, window, src, tgt, columns, encode_text(clip, target_text))
    for block_name, number, index in sorted(layers):
        patched.set_model_attn2_replace(replace, block_name, number, index)
    return patched


def replace_model(model, source: FPESource, *, mode: str, self_selection: LayerSelection, start: float, end: float,
                  cross_selection: LayerSelection | None = None, cross_start: float = 0.0, cross_end: float = 0.8,
                  clip=None, source_text: str = "", target_text: str = "", tokens: str = "all tokens",
                  words: str = ""):
    """A clone of ``model`` replacing self-attention maps (FPE), cross-attention maps, or both."""
    reject_chained_inject(model, "FPE Attention Replace")  # name this node, not the Inject it builds on
    if mode not in MODES:
        raise FPEError(f"mode: unknown value {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "self" and isinstance(source, FPESource):
        check_cross_source(source)  # before the Inject's checks: the missing setting is the news
    if mode == "cross":  # the Inject's run checks and clock, with an empty self-attention window
        stored = LayerSelection("custom", frozenset(source.stored_layers), label=source.layer_setting)
        patched = inject_model(model, source, selection=stored, start=0.0, end=0.0)
    else:
        patched = inject_model(model, source, selection=self_selection, start=start, end=end)
    if mode == "self":
        return patched
    assert cross_selection is not None
    return cross_patch(model, patched, source, clock=find_inject_patch(patched).clock, selection=cross_selection,
                       start=cross_start, end=cross_end, clip=clip,
                       source_text=source_text, target_text=target_text, tokens=tokens, words=words)


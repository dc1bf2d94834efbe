"""Which context tokens a prompt's words occupy: the word -> token mapping.

Cross-attention maps have one column per context token; naming a word (FPE Attention Replace's
``words``, the Word Heatmap, FPE Save Attention Maps) means finding its columns. The CLIP object's own
tokenizer decides, so prompt weights, embeddings and SDXL's two encoders count as the sampler saw them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import FPEError


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as its text encoder sees it: its words and the context positions of each."""

    text: str
    length: int  # context tokens (77 per CLIP chunk)
    words: tuple[str, ...]  # the prompt's words as CLIP's tokens split them ("ducks," is "ducks" and ",")
    positions: tuple[tuple[int, ...], ...]  # context positions of each word

    @property
    def count(self) -> int:
        """Tokens of words (start, end and padding tokens left out)."""
        return sum(len(p) for p in self.positions)

    def find(self, word: str) -> list[int]:
        """Indices of the words that read ``word`` (case and surrounding punctuation ignored)."""
        wanted = plain_word(word)
        return [i for i, w in enumerate(self.words) if plain_word(w) == wanted]

    def describe(self) -> str:
        return ", ".join(repr(w) for w in self.words) or "(no words)"


def plain_word(word: str) -> str:
    """A word as prompts are compared: lower case, surrounding punctuation dropped."""
    return re.sub(r"^\W+|\W+$", "", word.lower())


def prompt_tokens(clip, text: str) -> PromptTokens:
    """Tokenize ``text`` with the CLIP object's own tokenizer (weights syntax, embeddings, SDXL's two).

    Words are read from the tokens themselves (a CLIP BPE token that ends a word ends in ``</w>``), the
    same on every host: the tokenizers' word ids number weight segments on current ComfyUI, not words.
    Start, end and padding tokens (word id 0) belong to no word.
    """
    tokens = clip.tokenize(text, return_word_ids=True)
    name = "l" if "l" in tokens else sorted(tokens)[0]  # SDXL's g and l place words alike
    flat = [item for chunk in tokens[name] for item in chunk]
    words: list[str] = []
    positions: list[list[int]] = []
    open_word = False
    for place, item in enumerate(flat):
        token, word_id = item[0], (item[2] if len(item) > 2 else 1)
        if not word_id:
            open_word = False
            continue
        spelled = _spell(clip, token)
        if not open_word:
            words.append("")
            positions.append([])
        words[-1] += spelled.replace("</w>", "")
        positions[-1].append(place)
        open_word = not (spelled.endswith("</w>") or spelled == "<embedding>")
    return PromptTokens(text, len(flat), tuple(words), tuple(tuple(p) for p in positions))


TEXT_RTOL = 1e-2  # fp16 UNets see the context rounded (~1e-3); another prompt differs by far more


def encodes_alike(encoded: torch.Tensor, recorded: torch.Tensor) -> bool:
    """Whether a typed text's encoding (``[1, T, C]``) is the text context a sampler used (its first T
    tokens: ComfyUI may tile a context to batch it with a longer one), within ``TEXT_RTOL``."""
    encoded = encoded.reshape(-1, encoded.shape[-1]).float().cpu()
    recorded = recorded.reshape(-1, recorded.shape[-2], recorded.shape[-1])[0, :encoded.shape[0]].float().cpu()
    if encoded.shape != recorded.shape:
        return False
    return float((encoded - recorded).norm()) <= TEXT_RTOL * max(float(recorded.norm()), 1e-12)


def encode_text(clip, text: str) -> torch.Tensor:
    return clip.encode_from_tokens(clip.tokenize(text))


def _spell(clip, token) -> str:
    if not isinstance(token, int):
        return "<embedding>"
    try:
        return str(clip.tokenizer.untokenize([(token, 1.0)])[0][1])
    except Exception:  # a tokenizer without a vocabulary to read back
        return f"<{token}></w>"


def word_columns(source: PromptTokens, target: PromptTokens, words: str) -> tuple[list[int], list[int]]:
    """(target columns, source columns) of the named words, pairwise.

    A word in both prompts (a non-edited word, e.g. "car") pairs its positions in each prompt; a word in
    one prompt only (the edited word) pairs the same positions in both, which needs equal token counts.
    """
    items = [w for w in re.split(r"[,\s]+", words.strip()) if plain_word(w)]
    if not items:
        raise FPEError("words: name at least one word of the prompts (e.g. 'car', or the edited word), or set "
                       "tokens to 'all tokens'")
    cols_t: list[int] = []
    cols_s: list[int] = []
    for word in items:
        in_t, in_s = target.find(word), source.find(word)
        if not in_t and not in_s:
            raise FPEError(f"words: {word!r} is in neither prompt. target_text's words: {target.describe()}; "
                           f"source_text's words: {source.describe()}")
        if in_t and in_s:
            pos_t = [p for i in in_t for p in target.positions[i]]
            pos_s = [p for i in in_s for p in source.positions[i]]
            if len(pos_t) != len(pos_s):
                raise FPEError(f"words: {word!r} is {len(pos_s)} token(s) in source_text but {len(pos_t)} in "
                               f"target_text (it occurs a different number of times): name another word")
        else:
            if source.count != target.count:
                where = "target_text" if in_t else "source_text"
                raise FPEError(
                    f"words: {word!r} is only in {where}, so its columns pair by position, which needs prompts of "
                    f"equal token counts: source_text has {source.count} tokens, target_text {target.count}. Name "
                    f"words both prompts share, or make the prompts a word swap")
            own = target if in_t else source
            pos_t = pos_s = [p for i in (in_t or in_s) for p in own.positions[i]]
        cols_t += pos_t
        cols_s += pos_s
    return cols_t, cols_s

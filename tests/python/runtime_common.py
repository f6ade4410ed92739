"""Helpers shared by the runtime tests: HF-side tokenization and the comparison rules.

The comparison rules are stated once, here, with their tolerances:

- MARGIN: a position counts for a greedy/argmax comparison only where the float64
  reference's top-1 logit beats its top-2 by more than MARGIN relative to |top-1|.
  Below that, float32 rounding may legitimately flip the choice.
- F32_LOGIT_RTOL: llama.cpp on an F32 file (F32 KV cache) vs the float64 reference:
  max |delta logit| <= F32_LOGIT_RTOL * max(1, max |logit|). Observed ~5e-7 relative
  on the tiny fixtures; a wrong permutation, bias or norm gives O(1).
- Q8_0_MIN_AGREEMENT: share of teacher-forced positions where a Q8_0 file's argmax
  equals the F32 file's. The tiny fixtures have random weights (small margins), so
  the committed fixtures have clear margins (>0.3 relative), so 90% leaves room
  only for rounding, not for a wrong block; a trained model must reach SMOL_MIN_AGREEMENT.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MARGIN = 1e-3
F32_LOGIT_RTOL = 1e-4
Q8_0_MIN_AGREEMENT = 0.90
SMOL_MIN_AGREEMENT = 0.95

TOKENIZER_STRINGS = [
    "Hello, world! This is plain ASCII prose about a quick brown fox.",
    "Punctuation: (a), [b]; {c}... 'd' \"e\" -- f?! #g @h & i/j\\k",
    "Digits 0 12 345 6789 3.14159 1,000,000 and 2024-11-21",
    "multiple   spaces    between     words",
    "new\nlines\n\nand\ttabs\n",
    "café ünïcödé 日本",
    "  leading spaces and trailing ",
]

PROMPT_TEXT = "The quick brown fox jumps over the lazy dog. Hello, world!"


def hf_encoder(fx: Path):
    """A function str -> ids using the fixture's own tokenizer files (no special tokens added)."""
    tj = fx / "tokenizer.json"
    if tj.exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tj))
        return lambda s: tok.encode(s, add_special_tokens=False).ids
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(fx / "tokenizer.model"))
    return lambda s: list(sp.encode(s))


def bos_id(fx: Path) -> int | None:
    cfg = json.loads((fx / "config.json").read_text())
    return cfg.get("bos_token_id")


def prompt_ids(fx: Path, n: int = 12) -> list[int]:
    ids = hf_encoder(fx)(PROMPT_TEXT)
    bos = bos_id(fx)
    if bos is not None:
        ids = [bos] + ids
    return ids[:n]


def rel_margins(logits: np.ndarray) -> np.ndarray:
    """(top1 - top2) / |top1| for each row."""
    part = np.sort(logits, axis=-1)
    top1, top2 = part[:, -1], part[:, -2]
    return (top1 - top2) / np.maximum(np.abs(top1), 1e-12)


def argmax_lowest(logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits, axis=-1)  # numpy returns the lowest index on ties, like llama_check.mjs

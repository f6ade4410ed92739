"""Cross-check of `kiln eval`'s forward pass against the independent numpy
reference (ref_forward.py, float64, written from the Hugging Face modeling code).

kiln runs the tiny fixtures over windows of the committed evaluation text and
writes every scored position with `--per-token` (the token ids of each window,
the NLL of each model, the KL divergence, each model's top-1). The reference runs
the same windows and recomputes every number.

Stated tolerances (f32 candle vs f64 numpy, random-weight 2-layer models):
- per-position NLL: |kiln - reference| <= 1e-4 nats, for the original (HF
  checkpoint, BF16) and for a Q8_0 candidate kiln converted from it;
- perplexity: relative difference <= 1e-5;
- per-position KL divergence: |kiln - reference| <= 1e-5 nats;
- top-1: equal wherever the reference's top-1/top-2 margin exceeds 1e-4.
Tokenization: kiln's ids (from the GGUF-style tokenizer metadata) equal the
Hugging Face `tokenizers` library's encoding of the same text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ref_forward
from conftest import ROOT, fixture_path, run_kiln

TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
CTX = 64
CHUNKS = 3
NLL_TOL = 1e-4
PPL_RTOL = 1e-5
KLD_TOL = 1e-5


def kiln_eval(kiln, tmp_path, original, candidate=None):
    out = tmp_path / "per_token.json"
    args = ["eval", original]
    if candidate is not None:
        args.append(candidate)
    args += ["--text", TEXT, "--ctx", CTX, "--chunks", CHUNKS, "--per-token", out, "--json", "--quiet"]
    proc = run_kiln(kiln, *args)
    return json.loads(proc.stdout), json.loads(out.read_text())


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def reference_scores(model: ref_forward.RefModel, windows: list[list[int]]):
    """{(chunk, pos): (nll, logprobs row, top-1, margin)} for the second half of each window."""
    out = {}
    first = CTX // 2
    for c, win in enumerate(windows):
        lp = log_softmax(model.logits(win))
        for pos in range(first, CTX - 1):
            row = lp[pos]
            order = np.argsort(-row, kind="stable")
            out[(c, pos)] = (-row[win[pos + 1]], row, int(order[0]), float(row[order[0]] - row[order[1]]))
    return out


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-llama-spm", "tiny-qwen3"])
def test_forward_matches_numpy_reference(kiln, tmp_path, name):
    fx = fixture_path(name)
    report, per = kiln_eval(kiln, tmp_path, fx)
    windows = per["windows"]
    assert len(windows) == CHUNKS and all(len(w) == CTX for w in windows)
    ref = reference_scores(ref_forward.load_hf(fx), windows)
    scores = per["scores"]
    assert len(scores) == CHUNKS * (CTX - 1 - CTX // 2) == report["scored"]
    worst = 0.0
    for s in scores:
        nll, _, top1, margin = ref[(s["chunk"], s["pos"])]
        assert s["target"] == windows[s["chunk"]][s["pos"] + 1]
        worst = max(worst, abs(s["nll_original"] - nll))
        if margin > 1e-4:
            assert s["top1_original"] == top1, s
    assert worst <= NLL_TOL, f"{name}: max |NLL kiln - numpy| = {worst:.3g} > {NLL_TOL}"
    ref_ppl = float(np.exp(np.mean([ref[(s["chunk"], s["pos"])][0] for s in scores])))
    assert abs(report["original"]["perplexity"] / ref_ppl - 1) <= PPL_RTOL, (report["original"], ref_ppl)


def test_candidate_nll_and_kld_match_numpy_reference(kiln, convert, tmp_path):
    fx = fixture_path("tiny-llama")
    q8 = convert(fx, "q8_0")
    report, per = kiln_eval(kiln, tmp_path, fx, q8)
    windows = per["windows"]
    ref_o = reference_scores(ref_forward.load_hf(fx), windows)
    ref_c = reference_scores(ref_forward.load_gguf(q8), windows)
    worst_nll = worst_kld = 0.0
    for s in per["scores"]:
        key = (s["chunk"], s["pos"])
        _, lp_o, _, _ = ref_o[key]
        nll_c, lp_c, top_c, margin_c = ref_c[key]
        kld = float(np.sum(np.exp(lp_o) * (lp_o - lp_c)))
        worst_nll = max(worst_nll, abs(s["nll_candidate"] - nll_c))
        worst_kld = max(worst_kld, abs(s["kld"] - kld))
        if margin_c > 1e-4:
            assert s["top1_candidate"] == top_c, s
    assert worst_nll <= NLL_TOL, f"candidate: max |NLL kiln - numpy| = {worst_nll:.3g}"
    assert worst_kld <= KLD_TOL, f"max |KLD kiln - numpy| = {worst_kld:.3g}"
    # A Q8_0 copy is close but not identical.
    assert 0 < report["kld"]["mean"] < 0.01
    assert report["top1_agreement"] > 0.9


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_tokenization_matches_hf_tokenizers(kiln, tmp_path, name):
    from tokenizers import Tokenizer

    fx = fixture_path(name)
    _, per = kiln_eval(kiln, tmp_path, fx)
    hf = Tokenizer.from_file(str(fx / "tokenizer.json"))
    ids = hf.encode(TEXT.read_text(), add_special_tokens=False).ids
    cfg = json.loads((fx / "tokenizer_config.json").read_text())
    assert not cfg.get("add_bos_token"), "this check assumes no BOS is added"
    for c, win in enumerate(per["windows"]):
        assert win == ids[c * CTX : (c + 1) * CTX], f"window {c} differs from HF tokenizers"

"""kiln's recipes against llama.cpp's own quantizer, byte for byte.

fixtures/llama_cpp/goldens/ holds what llama-quantize (llama.cpp 0c1e570, via
llama-cpp-python 0.3.36, baseline x86-64; see fixtures/llama_cpp/README.md)
wrote for the tiny-llama, tiny-qwen3 and tiny-gemma3 fixtures and for SmolLM2-135M, in every recipe, with
and without an importance matrix, and with the type-changing options (and for
tiny-llama31, Llama 3.1-style with a `rope_freqs` tensor, in Q2_K, Q4_K_M,
Q6_K and Q8_0 with their option variants; and for tiny-phi, Phi-3 with fused
`attn_qkv` and `ffn_up`, in Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K, Q8_0 and variants). Here
kiln quantizes the same F32 input with the same recipe and options, and the
whole output file must hash to the golden's sha256 (header, metadata, tensor
order, padding and every block). On a mismatch the differing tensors are
named. CI never builds llama.cpp: only the JSON goldens are used.
"""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_kiln

REPO = Path(__file__).resolve().parents[2]
GOLDENS = sorted((REPO / "fixtures" / "llama_cpp" / "goldens").glob("*.json"))
IMATRIX_DIR = REPO / "fixtures" / "llama_cpp" / "imatrix"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="session")
def f32_inputs(kiln, kiln_fixture, smollm2, tmp_path_factory):
    """The F32 GGUFs llama.cpp quantized, made by kiln."""
    d = tmp_path_factory.mktemp("golden-inputs")
    # The MoE input (8 experts): generated, not committed.
    subprocess.run([str(kiln_fixture), "moe-goldens", str(d / "moe-goldens")], check=True, capture_output=True)
    moe = d / "moe-goldens-f32.gguf"
    run_kiln(kiln, "convert", d / "moe-goldens", "--type", "f32", "-o", moe, "--quiet")
    tiny = d / "tiny-llama-f32.gguf"
    run_kiln(kiln, "convert", REPO / "fixtures" / "tiny-llama", "--type", "f32", "-o", tiny, "--quiet")
    # Llama 3.1-style: kiln's computed rope_freqs must come out as llama.cpp keeps it.
    tiny31 = d / "tiny-llama31-f32.gguf"
    run_kiln(kiln, "convert", REPO / "fixtures" / "tiny-llama31", "--type", "f32", "-o", tiny31, "--quiet")
    # Phi-3: fused attn_qkv (llama.cpp's attn_v-like rules) and ffn_up.
    phi = d / "tiny-phi-f32.gguf"
    run_kiln(kiln, "convert", REPO / "fixtures" / "tiny-phi", "--type", "f32", "-o", phi, "--quiet")
    smol = d / "smollm2-f32.gguf"
    run_kiln(kiln, "convert", smollm2, "--type", "f32", "--allow-requantize", "-o", smol, "--quiet")
    qwen3 = d / "tiny-qwen3-f32.gguf"
    run_kiln(kiln, "convert", REPO / "fixtures" / "tiny-qwen3", "--type", "f32", "-o", qwen3, "--quiet")
    gemma = d / "tiny-gemma3-f32.gguf"
    run_kiln(kiln, "convert", REPO / "fixtures" / "tiny-gemma3", "--type", "f32", "-o", gemma, "--quiet")
    return {
        "tiny-llama-f32.gguf": tiny,
        "tiny-llama31-f32.gguf": tiny31,
        "tiny-phi-f32.gguf": phi,
        "smollm2-f32.gguf": smol,
        "tiny-qwen3-f32.gguf": qwen3,
        "tiny-gemma3-f32.gguf": gemma,
        "moe-goldens-f32.gguf": moe,
    }


def kiln_args(golden: dict) -> list[str]:
    args = ["--type", golden["recipe"]]
    opts = golden.get("options") or {}
    for tt in opts.get("tensor_type", []):
        args += ["--tensor-type", tt]
    if "output_tensor_type" in opts:
        args += ["--output-tensor-type", opts["output_tensor_type"]]
    if "token_embedding_type" in opts:
        args += ["--token-embedding-type", opts["token_embedding_type"]]
    if opts.get("leave_output_tensor"):
        args.append("--leave-output-tensor")
    if opts.get("pure"):
        args.append("--pure")
    unknown = set(opts) - {"tensor_type", "output_tensor_type", "token_embedding_type", "leave_output_tensor", "pure"}
    assert not unknown, f"golden uses options this test does not map: {unknown}"
    if golden.get("imatrix"):
        # llama-quantize records the path as given (quantize.imatrix.file), so
        # pass the same relative path from the imatrix directory.
        args += ["--imatrix", golden["imatrix"]["arg"]]
    return args


def test_goldens_are_present():
    assert len(GOLDENS) >= 100, f"expected the committed llama.cpp goldens, found {len(GOLDENS)}"
    names = {g.name for g in GOLDENS}
    for model in ("tiny-llama", "smollm2", "tiny-qwen3", "tiny-gemma3", "moe"):
        for recipe in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
                       "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16"):
            assert f"{model}.{recipe}.json" in names
            assert f"{model}.{recipe}.imatrix.json" in names


@pytest.mark.parametrize("golden_path", GOLDENS, ids=[g.stem for g in GOLDENS])
def test_byte_identical_to_llama_cpp(golden_path, kiln, f32_inputs, tmp_path):
    golden = json.loads(golden_path.read_text())
    src = f32_inputs[golden["input"]["file"]]
    out = tmp_path / "out.gguf"
    cwd_args = kiln_args(golden)
    proc = run_kiln(kiln, "convert", src.resolve(), *cwd_args, "-o", out.resolve(), "--quiet", check=False,
                    cwd=IMATRIX_DIR)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == golden["file_bytes"], "file size differs from llama.cpp's"
    if sha256(out) == golden["file_sha256"]:
        return
    # Name what differs.
    import gguf  # noqa: PLC0415

    r = gguf.GGUFReader(out)
    ours = {t.name: (t.tensor_type.name, hashlib.sha256(bytes(t.data.tobytes())).hexdigest()) for t in r.tensors}
    diffs = []
    for t in golden["tensors"]:
        mine = ours.get(t["name"])
        if mine is None:
            diffs.append(f"{t['name']}: missing")
        elif mine[0].lower() != t["type"].lower() or mine[1] != t["sha256"]:
            diffs.append(f"{t['name']}: kiln {mine[0]} vs llama.cpp {t['type']}, bytes {'same' if mine[1] == t['sha256'] else 'differ'}")
    pytest.fail(f"{golden_path.name}: not byte-identical; tensors: {diffs or 'all equal (header/metadata differ)'}")

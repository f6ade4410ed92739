"""`kiln build`'s artifacts judged by llama.cpp's own tools: gguf-py and the llama.cpp runtime.

On the tiny Llama fixture, one single-file build (`--bpw 4.5`) and one build sharded
across two devices (`--budget-gb 0.0005`, llama.cpp's gguf-split layout):

- gguf-py reads the single file and both split files; the manifest's hashes, sizes,
  tensor names and types are the files'; the split keys carry gguf-split's value
  types (split.no and split.count UINT16, split.tensors.count INT32), the first split
  holds all the metadata and the second only the split keys;
- the tensor data of each build is byte-identical to `kiln convert` given the same
  per-tensor types (`--tensor-type ^NAME$=TYPE` for every tensor): sharding moves
  tensors between files and changes no byte of them;
- llama.cpp (node-llama-cpp) loads the single file and generates; it loads the split
  model by its first file and computes the same logits as on the one-file conversion
  with the same types; with the second split missing it refuses to load.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import LLAMA_CHECK, NODE_DIR, fixture_path, require, run_kiln, sha256
from runtime_common import prompt_ids

FX = "tiny-llama"
SPLIT_KEYS = ["split.no", "split.count", "split.tensors.count"]
SHARDS = ["tiny-llama-00001-of-00002.gguf", "tiny-llama-00002-of-00002.gguf"]
VT = gguf.GGUFValueType
N_GEN = 16


def build(kiln: Path, out: Path, *extra: str) -> dict:
    run_kiln(kiln, "build", fixture_path(FX), "--target", "m2", "-o", out, "--quiet", *extra)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def single(kiln, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("build") / "single"
    return out, build(kiln, out, "--bpw", "4.5")


@pytest.fixture(scope="module")
def split(kiln, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("build") / "split"
    m = build(kiln, out, "--budget-gb", "0.0005")
    assert m["serving"]["devices"] == 2, f"--budget-gb 0.0005 was meant to shard: {m['serving']}"
    return out, m


def convert_with_types(kiln: Path, manifest: dict, out: Path) -> Path:
    """`kiln convert` with every tensor's type given explicitly, as the manifest lists them."""
    args = ["convert", fixture_path(FX), "--type", "q8_0", "--pure", "-o", out, "--quiet"]
    for t in manifest["tensors"]:
        name, ty = t["name"], t["type"]
        if name == "output.weight":
            args += ["--output-tensor-type", ty]
        elif name == "token_embd.weight":
            args += ["--token-embedding-type", ty]
        elif len(t["shape"]) > 1:
            args += ["--tensor-type", f"^{re.escape(name)}$={ty}"]
    run_kiln(kiln, *args)
    return out


def reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py refusing the file is the finding
        pytest.fail(f"gguf-py cannot read {path.name}: {e}", pytrace=False)


def tensor_bytes(r: gguf.GGUFReader) -> dict[str, tuple[str, bytes]]:
    """name -> (type name, raw tensor data) in file order."""
    return {
        t.name: (t.tensor_type.name, r.data[t.data_offset : t.data_offset + t.n_bytes].tobytes())
        for t in r.tensors
    }


def check_files(out: Path, manifest: dict) -> None:
    for e in manifest["files"]:
        p = out / e["path"]
        assert p.is_file() and Path(e["path"]).name == e["path"], e
        assert p.stat().st_size == e["bytes"], e["path"]
        assert sha256(p) == e["sha256"], e["path"]


def check_types(readers: list[gguf.GGUFReader], manifest: dict) -> None:
    got = [(t.name, t.tensor_type.name, int(t.n_bytes)) for r in readers for t in r.tensors]
    want = [(t["name"], t["type"].upper(), t["bytes"]) for t in manifest["tensors"]]
    assert sorted(got) == sorted(want), "manifest tensors differ from the file's"


def test_gguf_py_reads_the_single_file_build(single):
    out, m = single
    check_files(out, m)
    r = reader(out / "tiny-llama.gguf")
    assert r.fields["general.architecture"].contents() == "llama"
    assert not any(k.startswith("split.") for k in r.fields), "a one-device build is not split"
    check_types([r], m)
    assert m["size"]["actual_bytes"] == (out / "tiny-llama.gguf").stat().st_size


def test_gguf_py_reads_both_split_files(single, split):
    out, m = split
    check_files(out, m)
    assert [e["path"] for e in m["files"]] == SHARDS
    readers = [reader(out / n) for n in SHARDS]
    total = sum(len(r.tensors) for r in readers)
    for i, r in enumerate(readers):
        assert len(r.tensors) > 0, f"split {i} is empty"
        for key, vt, value in [("split.no", VT.UINT16, i), ("split.count", VT.UINT16, 2), ("split.tensors.count", VT.INT32, total)]:
            f = r.fields.get(key)
            assert f is not None, f"{SHARDS[i]}: no {key}"
            assert f.types == [vt], f"{SHARDS[i]}: {key} is {f.types}, gguf-split writes {vt.name}"
            assert f.contents() == value, f"{SHARDS[i]}: {key} = {f.contents()}, want {value}"
    check_types(readers, m)

    # The first split: all the one-file build's metadata (same values but for the
    # file type), then the split keys; the second: only the split keys.
    one = reader(single[0] / "tiny-llama.gguf")
    def own(r: gguf.GGUFReader) -> list[str]:
        return [k for k in r.fields if not k.startswith("GGUF.")]

    first = own(readers[0])
    assert first[-3:] == SPLIT_KEYS
    assert first[:-3] == own(one)
    for k in own(one):
        if k != "general.file_type":
            assert readers[0].fields[k].contents() == one.fields[k].contents(), k
    assert own(readers[1]) == SPLIT_KEYS
    # Together: the one-file build's tensors, in its order.
    assert [t.name for r in readers for t in r.tensors] == [t.name for t in one.tensors]


@pytest.mark.parametrize("which", ["single", "split"])
def test_tensor_data_equals_convert_with_the_same_types(which, single, split, kiln, tmp_path):
    out, m = {"single": single, "split": split}[which]
    ref = reader(convert_with_types(kiln, m, tmp_path / "same-types.gguf"))
    want = tensor_bytes(ref)
    files = ["tiny-llama.gguf"] if which == "single" else SHARDS
    got: dict[str, tuple[str, bytes]] = {}
    for n in files:
        got.update(tensor_bytes(reader(out / n)))
    assert list(got) == list(want), "tensor names or order differ"
    bad = [name for name in want if got[name] != want[name]]
    assert not bad, "tensors differ from `kiln convert` with the same types: " + ", ".join(
        f"{n} ({got[n][0]} vs {want[n][0]})" for n in bad
    )


# -- llama.cpp --------------------------------------------------------------------


def run_llama_check(request: dict) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    require((NODE_DIR / "node_modules" / "node-llama-cpp").is_dir(), "tests/node/node_modules is missing")
    return subprocess.run(
        [node, str(LLAMA_CHECK), "-"], input=json.dumps(request), capture_output=True, text=True, cwd=NODE_DIR, timeout=600
    )


def test_llama_cpp_generates_from_the_single_file_build(single, llama):
    out, _ = single
    fx = fixture_path(FX)
    prompt = prompt_ids(fx)
    res = llama({"model": str(out / "tiny-llama.gguf"), "evaluate": {"tokens": prompt, "top": 2}, "generate": {"prompt": prompt, "n": N_GEN}})
    n_vocab = res["info"]["nVocab"]
    assert res["info"]["architecture"] == "llama"
    gen = res["generate"]["tokens"]
    assert len(gen) == N_GEN and all(0 <= t < n_vocab for t in gen), gen
    assert len(res["evaluate"]) == len(prompt)
    for row in res["evaluate"]:
        assert all(np.isfinite(logit) for _, logit in row["top"]), row


def test_llama_cpp_loads_the_split_model_by_its_first_file(split, kiln, llama, tmp_path):
    out, m = split
    fx = fixture_path(FX)
    prompt = prompt_ids(fx)
    seq = prompt + [int(t) for t in np.arange(len(prompt)) % 7 + 10]
    req = {"evaluate": {"tokens": seq, "top": 4}, "generate": {"prompt": prompt, "n": N_GEN}}
    got = llama({"model": str(out / SHARDS[0]), **req})
    # The same tensors in one file: llama.cpp must compute the same thing.
    one = llama({"model": str(convert_with_types(kiln, m, tmp_path / "same-types.gguf")), **req})
    assert got["info"]["nVocab"] == one["info"]["nVocab"]
    assert got["generate"]["tokens"] == one["generate"]["tokens"]
    a = np.array([[logit for _, logit in row["top"]] for row in got["evaluate"]])
    b = np.array([[logit for _, logit in row["top"]] for row in one["evaluate"]])
    assert [row["argmax"] for row in got["evaluate"]] == [row["argmax"] for row in one["evaluate"]]
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5), f"top logits differ by up to {np.abs(a - b).max():.3g}"

    # With the second split missing, llama.cpp refuses: it did read both files.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / SHARDS[0], alone / SHARDS[0])
    proc = run_llama_check({"model": str(alone / SHARDS[0]), "generate": {"prompt": prompt, "n": 1}})
    assert proc.returncode != 0, "llama.cpp loaded the first split without the second"
    assert SHARDS[1] in proc.stderr, proc.stderr[-2000:]

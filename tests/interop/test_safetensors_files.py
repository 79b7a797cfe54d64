"""The safetensors checkpoints llmopt writes, read by the real tools: the `safetensors` package
reads every tensor, the bytes follow the format (header, contiguous offsets), and transformers
loads the checkpoint with no missing or unexpected weight and runs it. Also: a transformers
checkpoint loaded and saved again by llmopt keeps every tensor bit for bit."""

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from conftest import ROOT

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1}


@pytest.fixture(scope="session")
def demo_run(host, session_dir):
    """The run directory of examples/random-init/pipeline.yaml (two random GPT-2 models saved by llmopt)."""
    out = session_dir / "demo-run"
    if not out.exists():
        host.run("-q", "run", ROOT / "examples" / "random-init" / "pipeline.yaml", "--out", out)
    return out


@pytest.fixture(params=["tiny", "small"])
def llmopt_checkpoint(request, demo_run):
    d = demo_run / request.param / "model"
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file(), sorted(d.iterdir())
    return d


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return n, header


def test_file_layout_follows_the_safetensors_format(llmopt_checkpoint):
    path = llmopt_checkpoint / "model.safetensors"
    n, header = read_header(path)
    meta = header.pop("__metadata__", {})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    spans = []
    for name, t in header.items():
        assert set(t) == {"dtype", "shape", "data_offsets"}, name
        begin, end = t["data_offsets"]
        assert end - begin == DTYPE_BYTES[t["dtype"]] * int(np.prod(t["shape"], dtype=np.int64)), name
        spans.append((begin, end, name))
    spans.sort()
    assert spans[0][0] == 0
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        assert end == begin, f"gap or overlap between {a} and {b}"
    assert 8 + n + spans[-1][1] == path.stat().st_size, "bytes after the last tensor"


def test_safetensors_reads_what_llmopt_wrote(llmopt_checkpoint):
    path = llmopt_checkpoint / "model.safetensors"
    n, header = read_header(path)
    header.pop("__metadata__", None)
    raw = path.read_bytes()[8 + n:]
    tensors = load_file(path)
    assert set(tensors) == set(header)
    with safe_open(path, framework="pt") as f:
        assert set(f.keys()) == set(header)
        for name, t in header.items():
            a = tensors[name]
            assert list(a.shape) == t["shape"] and a.dtype == np.float32, name
            begin, end = t["data_offsets"]
            assert a.tobytes() == raw[begin:end], name
            assert torch.equal(f.get_tensor(name), torch.from_numpy(a)), name
            assert np.isfinite(a).all(), name


def test_transformers_loads_llmopt_checkpoint_and_runs_it(llmopt_checkpoint):
    from transformers import GPT2LMHeadModel

    model, info = GPT2LMHeadModel.from_pretrained(llmopt_checkpoint, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    model.eval()

    state = model.state_dict()
    for name, a in load_file(llmopt_checkpoint / "model.safetensors").items():
        assert torch.equal(state[name], torch.from_numpy(a)), name

    cfg = json.loads((llmopt_checkpoint / "config.json").read_text())
    ids = torch.arange(16).remainder(cfg["vocab_size"])[None]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 16, cfg["vocab_size"])
    assert torch.isfinite(logits).all()
    assert logits.std() > 0


# (stage, its `with:` settings): each loads and saves the model unchanged
PASS_THROUGH_STAGES = [("model.copy", ""), ("model.save", ""), ("identity", ""),
                       ("quantize.cast", ", with: {dtype: f32}")]


def test_transformers_checkpoint_round_trips_bit_identically(host, models, tmp_path):
    stage, with_ = next(((s, w) for s, w in PASS_THROUGH_STAGES if host.has_stage(s)), (None, ""))
    if stage is None:
        pytest.skip(f"no pass-through stage ({', '.join(s for s, _ in PASS_THROUGH_STAGES)}) to load and "
                    "save a checkpoint with")
    src = models["llama_gqa"]
    cfg = tmp_path / "roundtrip.yaml"
    cfg.write_text(f"name: roundtrip\nmodel: {src}\nstages:\n  - {{id: same, uses: {stage}{with_}}}\n"
                   "outputs: [same]\n")
    host.run("-q", "run", cfg, "--out", tmp_path / "run")
    out = tmp_path / "run" / "same" / "model" / "model.safetensors"
    want, got = load_file(src / "model.safetensors"), load_file(out)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), name


def test_sharded_save_loads_in_transformers_and_back_bit_identically(host, models, tmp_path):
    """--max-shard-size splits the weights as save_pretrained(max_shard_size=...) does: files of at
    most that many bytes (a bigger tensor alone), model-0000i-of-0000n.safetensors and an index whose
    weight_map names every tensor's file. transformers loads the directory; so does llmopt, tensor
    for tensor equal to the source, and a second save of it is again sharded the same way."""
    stage, with_ = next(((s, w) for s, w in PASS_THROUGH_STAGES if host.has_stage(s)), (None, ""))
    if stage is None:
        pytest.skip("no pass-through stage to load and save a checkpoint with")
    src = models["gpt2"]
    want = load_file(src / "model.safetensors")
    limit = 20000
    cfg = tmp_path / "shard.yaml"
    cfg.write_text(f"name: shard\nmodel: {src}\nstages:\n  - {{id: same, uses: {stage}{with_}}}\n"
                   "  - {id: again, uses: " + stage + with_ + ", inputs: {model: same}}\n"
                   "outputs: [same, again]\n")
    host.run("-q", "--max-shard-size", "20KB", "run", cfg, "--out", tmp_path / "run")
    out = tmp_path / "run" / "same" / "model"
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted({f for f in index["weight_map"].values()})
    n = len(files)
    assert n > 2 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert set(index["weight_map"]) == set(want)
    got = {}
    for f in files:
        part = load_file(out / f)
        sizes = [t.nbytes for t in part.values()]
        assert sum(sizes) <= limit or len(sizes) == 1, f"{f}: {sum(sizes)} bytes in {len(sizes)} tensors"
        assert all(index["weight_map"][k] == f for k in part), f
        got.update(part)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in want.values())
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    again = tmp_path / "run" / "again" / "model"
    assert json.loads((again / "model.safetensors.index.json").read_text())["weight_map"] == index["weight_map"]
    logits = []
    for d in (src, out):  # our loader reads the shards back: the very same logits
        host.run("forward", d, "--ids", "1,2,3,4,5", "--out", tmp_path / "logits.bin")
        logits.append((tmp_path / "logits.bin").read_bytes())
    assert logits[0] == logits[1]

    from transformers import GPT2LMHeadModel
    ref = GPT2LMHeadModel.from_pretrained(src).eval()
    mine = GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, mine(ids).logits)


def test_max_shard_size_refuses_what_is_not_a_size(host):
    p = host.run("--max-shard-size", "lots", "plugins", check=False)
    assert p.returncode == 2 and b"--max-shard-size wants a size" in p.stderr

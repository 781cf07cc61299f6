"""Reference tests of chord's safetensors reader and writer (server/model/safetensors.c).

Files are written by the `safetensors` library and by `transformers.save_pretrained`, read by
chord (through tests/reference/st_tool, path in $ST_TOOL), and the values compared with what
torch reads; files chord writes are read back by `safetensors.torch.load_file` and
`transformers.from_pretrained`. Every expected value comes from torch, never from chord.
"""

import json
import os
import struct
import subprocess

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ST_TOOL = os.environ.get("ST_TOOL", "st_tool")


def st_tool(*args, check=True):
    p = subprocess.run([ST_TOOL, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"st_tool {' '.join(map(str, args))} failed: {p.stderr}")
    return p


def chord_read_all(path, tmp_path):
    """{name: float32 ndarray} as chord reads PATH (a file or a model directory)."""
    out = tmp_path / "dump.bin"
    listing = st_tool("dump", path, out).stdout.splitlines()
    raw = np.fromfile(out, dtype="<f4")
    tensors, at = {}, 0
    for line in listing:
        name, dtype, dims = (line.split(" ") + [""])[:3]
        shape = tuple(int(d) for d in dims.split(",") if d)
        n = int(np.prod(shape)) if shape else 1
        tensors[name] = (dtype, raw[at : at + n].reshape(shape))
        at += n
    assert at == raw.size
    return tensors


def special_values(dtype):
    """Values that stress the conversions: signed zeros, infinities, NaN, extremes, subnormals."""
    info = torch.finfo(dtype)
    vals = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), info.max, -info.max,
            info.tiny, -info.tiny, info.tiny / 4, info.eps, 1.0 + info.eps, 0.1, 1 / 3]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


def same_bits_f32(a, b):
    """Exact equality of float32 arrays, NaN == NaN."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    return a.shape == b.shape and bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | both_nan))


@pytest.mark.parametrize("dtype,name", [(torch.float32, "F32"), (torch.bfloat16, "BF16"),
                                        (torch.float16, "F16"), (torch.float64, "F64")])
def test_reads_safetensors_library_files(tmp_path, dtype, name):
    g = torch.Generator().manual_seed(1)
    ref = {
        "matrix": torch.randn(7, 13, generator=g).to(dtype),
        "cube": (torch.randn(2, 3, 5, generator=g) * 100).to(dtype),
        "vector": torch.randn(33, generator=g).to(dtype),
        "scalar": torch.tensor(3.25, dtype=dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
        "special": special_values(dtype),
        "tiny_subnormals": (torch.arange(1, 9, dtype=torch.float64) * torch.finfo(dtype).tiny / 8).to(dtype),
    }
    path = tmp_path / "t.safetensors"
    save_file(ref, str(path), metadata={"format": "pt"})
    got = chord_read_all(path, tmp_path)
    assert set(got) == set(ref)
    for k, t in ref.items():
        d, arr = got[k]
        assert d == name, k
        # bf16/f16 -> f32 is exact; f64 -> f32 rounds to nearest even in both torch and chord.
        assert same_bits_f32(arr, t.float().numpy()), k


def tiny_llama(tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def test_reads_transformers_sharded_checkpoint(tmp_path):
    model = tiny_llama()
    for dtype, name in [(torch.float32, "F32"), (torch.bfloat16, "BF16")]:
        d = tmp_path / f"hf_{name}"
        model.to(dtype).save_pretrained(d, max_shard_size="20KB")
        assert (d / "model.safetensors.index.json").exists()
        assert len(list(d.glob("model-*-of-*.safetensors"))) > 1
        got = chord_read_all(d, tmp_path)
        sd = model.state_dict()
        assert set(got) == set(sd)
        for k, t in sd.items():
            assert got[k][0] == name
            assert same_bits_f32(got[k][1], t.float().numpy()), k
    model.float()


@pytest.mark.parametrize("dtype,torch_dtype", [("f32", torch.float32), ("bf16", torch.bfloat16),
                                               ("f16", torch.float16)])
def test_written_file_loads_in_safetensors(tmp_path, dtype, torch_dtype):
    g = torch.Generator().manual_seed(2)
    src = {
        "w": torch.randn(17, 9, generator=g) * 3,
        # values across every f16/bf16 regime: subnormal, normal, overflow, ties
        "wide": torch.logspace(-30, 30, 241, dtype=torch.float64).float() * torch.sign(torch.randn(241, generator=g)),
        "f16_edges": torch.tensor([65504.0, 65519.9, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9]),
        "ties": torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-11, 1.0 + 3 * 2**-11]),
        "special": special_values(torch.float32),
        "scalar": torch.tensor(-0.5),
        "empty": torch.zeros(3, 0),
    }
    inp = tmp_path / "src.safetensors"
    save_file(src, str(inp))
    out = tmp_path / "out.safetensors"
    st_tool("convert", inp, out, dtype)
    loaded = load_file(str(out))
    assert set(loaded) == set(src)
    for k, t in src.items():
        want = t.to(torch_dtype)  # torch rounds to nearest even, like chord should
        got = loaded[k]
        assert got.dtype == torch_dtype and got.shape == want.shape, k
        assert torch.equal(got.isnan(), want.isnan()), k
        m = ~want.isnan()
        assert torch.equal(got[m], want[m]), k
        # signed zeros too
        assert torch.equal(torch.signbit(got[m]), torch.signbit(want[m])), k
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    raw = out.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0, "header must be padded to 8 bytes"
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    ends = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert ends[0][0] == 0 and ends[-1][1] == len(raw) - 8 - n


def test_sharded_save_matches_transformers_layout(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama()
    ref_dir = tmp_path / "hf"
    model.save_pretrained(ref_dir, max_shard_size=20000)
    single = tmp_path / "single"
    model.save_pretrained(single)  # one file: chord re-shards it
    order = tmp_path / "order.txt"
    order.write_text("\n".join(model.state_dict().keys()) + "\n")
    out = tmp_path / "chord"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"stale")  # a previous save: must be removed
    st_tool("convert", single, out, "f32", 20000, order)
    assert not (out / "model.safetensors").exists()

    ref_index = json.loads((ref_dir / "model.safetensors.index.json").read_text())
    got_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert got_index["weight_map"] == ref_index["weight_map"]
    assert got_index["metadata"] == ref_index["metadata"]
    ref_files = sorted(p.name for p in ref_dir.glob("*.safetensors"))
    assert sorted(p.name for p in out.glob("*.safetensors")) == ref_files
    for name in ref_files:
        a, b = load_file(str(ref_dir / name)), load_file(str(out / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)

    # transformers loads the chord-written checkpoint with every weight in place
    (out / "config.json").write_text((ref_dir / "config.json").read_text())
    loaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for k, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], t), k

    # and a save under the limit in the same directory goes back to one file, shards removed
    st_tool("convert", single, out, "bf16", 10**9, order)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()


def test_tied_model_and_big_tensor_shard(tmp_path):
    """A tensor over the limit gets a shard of its own, numbered as huggingface_hub does."""
    model = tiny_llama(tie=True)
    ref_dir = tmp_path / "hf"
    model.save_pretrained(ref_dir, max_shard_size=10000)  # embed (12800 B) is over the limit
    single = tmp_path / "single"
    model.save_pretrained(single)
    order = tmp_path / "order.txt"
    keys = list(load_file(str(single / "model.safetensors")).keys())
    sd_keys = [k for k in model.state_dict().keys() if k in keys]
    order.write_text("\n".join(sd_keys) + "\n")
    out = tmp_path / "chord"
    st_tool("convert", single, out, "f32", 10000, order)
    ref_index = json.loads((ref_dir / "model.safetensors.index.json").read_text())
    got_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert got_index["weight_map"] == ref_index["weight_map"]
    assert got_index["metadata"]["total_size"] == ref_index["metadata"]["total_size"]


def test_corrupt_files_give_errors(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.ones(4, 4), "b": torch.zeros(3)}, str(path))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])

    def variant(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        r = st_tool("check", p, check=False)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and str(p) in r.stderr, r.stderr
        return r.stderr

    def with_header(h):
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + raw[8 + n :]

    assert "truncated" in variant("trunc.safetensors", raw[:-5])
    assert "past the end" in variant("hlen.safetensors", struct.pack("<Q", 10**6) + raw[8:])
    assert "too short" in variant("short.safetensors", raw[:5])
    h = json.loads(json.dumps(header))
    h["a"]["dtype"] = "F8_E9M9"
    assert "a: dtype" in variant("dtype.safetensors", with_header(h))
    h = json.loads(json.dumps(header))
    h["a"]["shape"] = [4, 5]
    assert "tensor a" in variant("shape.safetensors", with_header(h))
    h = json.loads(json.dumps(header))
    h["b"]["data_offsets"] = [h["a"]["data_offsets"][1] - 4, h["a"]["data_offsets"][1] + 8]
    assert "overlap" in variant("overlap.safetensors", with_header(h))
    # the library itself accepts the original
    assert st_tool("check", path).stdout.strip() == "ok"

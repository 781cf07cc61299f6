"""Reference tests of chord's config.json handling (server/model/config.c) against transformers.

chord reads config.json files (written by transformers' config classes, or by hand with optional
fields left out, old and new RoPE layouts) through tests/reference/st_tool ($ST_TOOL); every field,
the parameter count and RoPE's inv_freq are compared with what transformers builds from the same
file. Configs chord writes must load in AutoConfig / AutoModelForCausalLM and read back the same.
"""

import json
import os
import subprocess

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ST_TOOL = os.environ.get("ST_TOOL", "st_tool")


def st_tool(*args, check=True):
    p = subprocess.run([ST_TOOL, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"st_tool {' '.join(map(str, args))} failed: {p.stderr}")
    return p


def chord_config(d):
    return json.loads(st_tool("config", d).stdout)


SMALL = dict(vocab_size=96, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
             intermediate_size=80)

CASES = {
    # hand-written files: optional fields absent take the class defaults
    "llama_minimal": dict(model_type="llama", **SMALL),
    "qwen2_minimal": dict(model_type="qwen2", num_key_value_heads=2, **SMALL),
    "qwen3_minimal": dict(model_type="qwen3", num_key_value_heads=3, **SMALL),
    "arch_only": dict(architectures=["Qwen2ForCausalLM"], num_key_value_heads=6, **SMALL),
    "llama_bias_headdim": dict(model_type="llama", num_key_value_heads=2, head_dim=16,
                               attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                               rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=5,
                               eos_token_id=[6, 7], pad_token_id=0, **SMALL),
    "llama3_rope_scaling_old": dict(
        model_type="llama", num_key_value_heads=3, rope_theta=500000.0, max_position_embeddings=4096,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        **dict(SMALL, hidden_size=384, num_attention_heads=3)),
    "llama3_rope_parameters_new": dict(
        model_type="llama", rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0,
                                             "factor": 32.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 512},
        **dict(SMALL, hidden_size=256, num_attention_heads=2)),
    "linear_scaling": dict(model_type="qwen2", num_key_value_heads=6,
                           rope_scaling={"type": "linear", "factor": 2.5}, rope_theta=1e6, **SMALL),
    "qwen3_headdim_bias": dict(model_type="qwen3", num_key_value_heads=2, head_dim=32,
                               attention_bias=True, tie_word_embeddings=True,
                               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                               dtype="bfloat16", **SMALL),
}

# Configs as published for real checkpoints (field for field, sizes included): the model is built
# on the meta device, so nothing is allocated.
REAL = {
    "Qwen2.5-0.5B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
        "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
    "Llama-3.2-1B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256},
    "Qwen3-0.6B": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
}


def hf_view(d):
    """The fields transformers derives from the config in directory d, and the model it builds."""
    cfg = AutoConfig.from_pretrained(d)
    torch.manual_seed(0)
    meta = cfg.vocab_size * cfg.hidden_size > 10**7
    with torch.device("meta" if meta else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg)
    attn = model.model.layers[0].self_attn
    mlp = model.model.layers[0].mlp
    eos = cfg.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    view = {
        "model_type": cfg.model_type,
        "architecture": type(model).__name__,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": head_dim,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_parameters["rope_theta"],
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": int(bool(cfg.tie_word_embeddings)),
        "attention_bias": int(attn.q_proj.bias is not None),
        "o_proj_bias": int(attn.o_proj.bias is not None),
        "mlp_bias": int(mlp.gate_proj.bias is not None),
        "qk_norm": int(hasattr(attn, "q_norm")),
        "bos_token_id": -1 if cfg.bos_token_id is None else cfg.bos_token_id,
        "pad_token_id": -1 if cfg.pad_token_id is None else cfg.pad_token_id,
        "eos_token_ids": eos,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    # Shapes tell heads, kv heads and head_dim apart as transformers really uses them.
    assert attn.q_proj.weight.shape == (view["num_attention_heads"] * head_dim, cfg.hidden_size)
    assert attn.k_proj.weight.shape == (view["num_key_value_heads"] * head_dim, cfg.hidden_size)
    rope_type = cfg.rope_parameters.get("rope_type", "default")
    if rope_type == "default":
        inv_freq = model.model.rotary_emb.compute_default_rope_parameters(cfg)[0]
    else:
        inv_freq = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")[0]
    # and the model's own buffer agrees with the init function
    if not meta:
        assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)
    return view, inv_freq


def write_config(d, cfg):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=2))


def compare(chord, hf, inv_freq):
    for k, v in hf.items():
        if isinstance(v, float):
            assert chord[k] == pytest.approx(v, rel=0, abs=0), k
        else:
            assert chord[k] == v, k
    got = torch.tensor(chord["inv_freq"], dtype=torch.float32)
    assert got.shape == inv_freq.shape
    # chord follows transformers op for op in float32 with a correctly rounded powf. torch's
    # vectorised pow (Sleef, error < 1 ulp) differs from its own one-element path by one unit in
    # the last place for a few exponents (e.g. theta 50000, head_dim 128, i = 10, 47), so: <= 1 ulp.
    ulp = torch.nextafter(inv_freq, torch.tensor(float("inf"))) - inv_freq
    assert torch.all((got - inv_freq).abs() <= ulp), (got - inv_freq)


def hf_readable(cfg):
    """transformers' AutoConfig needs model_type; chord also takes architectures alone."""
    if "model_type" in cfg:
        return cfg
    family = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
    return dict(cfg, model_type=family[cfg["architectures"][0]])


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_matches_transformers(tmp_path, case):
    d = tmp_path / case
    write_config(d, CASES[case])
    write_config(tmp_path / "hf", hf_readable(CASES[case]))
    hf, inv_freq = hf_view(tmp_path / "hf")
    compare(chord_config(d), hf, inv_freq)


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_config_loads_in_transformers_and_round_trips(tmp_path, case):
    src = tmp_path / "src"
    write_config(src, CASES[case])
    first = chord_config(src)
    out = tmp_path / "out"
    st_tool("config-save", src, out)
    write_config(src, hf_readable(CASES[case]))
    # the file chord wrote means the same to transformers as the original ...
    hf_src, inv_src = hf_view(src)
    hf_out, inv_out = hf_view(out)
    assert hf_out == hf_src
    assert torch.equal(inv_out, inv_src)
    # ... and to chord
    assert chord_config(out) == first
    # and a model saved with it loads with from_pretrained, every weight in place
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
    model.save_pretrained(tmp_path / "weights")
    for p in (tmp_path / "weights").glob("*.safetensors"):
        (out / p.name).write_bytes(p.read_bytes())
    loaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for k, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], t), k


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_checkpoint_configs(tmp_path, name):
    write_config(tmp_path, REAL[name])
    hf, inv_freq = hf_view(tmp_path)
    compare(chord_config(tmp_path), hf, inv_freq)


def test_transformers_written_configs(tmp_path):
    """Configs as transformers' own classes save them (rope_parameters, null token ids)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    for cls, kw in [(LlamaConfig, dict(num_key_value_heads=2)),
                    (Qwen2Config, dict(num_key_value_heads=3, tie_word_embeddings=True)),
                    (Qwen3Config, dict(num_key_value_heads=1, head_dim=24))]:
        d = tmp_path / cls.__name__
        cls(**SMALL, **kw).save_pretrained(d)
        hf, inv_freq = hf_view(d)
        compare(chord_config(d), hf, inv_freq)


BAD = [
    ({"model_type": "llama", **dict(SMALL, num_attention_heads=12), "num_key_value_heads": 5},
     "num_key_value_heads: must divide num_attention_heads (12 % 5 != 0)"),
    ({"model_type": "llama", **{k: v for k, v in SMALL.items() if k != "vocab_size"}},
     "vocab_size: missing"),
    ({"model_type": "qwen2", **dict(SMALL, hidden_size=-48)}, "hidden_size: must be positive"),
    ({"model_type": "qwen2", **dict(SMALL, num_hidden_layers="2")},
     "num_hidden_layers: must be an integer"),
    ({"model_type": "llama", **SMALL, "rms_norm_eps": 0}, "rms_norm_eps: must be positive"),
    ({"model_type": "mistral", **SMALL}, "model_type"),
    ({"model_type": "llama", **SMALL, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "rope_type"),
    ({"model_type": "llama", **dict(SMALL, hidden_size=50)}, "hidden_size"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_configs_rejected_naming_the_field(tmp_path, i):
    cfg, message = BAD[i]
    write_config(tmp_path, cfg)
    r = st_tool("config", tmp_path, check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr


@pytest.mark.parametrize("cfg,accepted", [
    # transformers' LlamaConfig wants hidden_size % heads == 0 even with head_dim; Qwen does not
    ({"model_type": "llama", **dict(SMALL, hidden_size=50), "num_attention_heads": 5,
      "head_dim": 16}, True),
    ({"model_type": "llama", **dict(SMALL, hidden_size=50), "num_attention_heads": 4,
      "head_dim": 16}, False),
    ({"model_type": "qwen2", **dict(SMALL, hidden_size=50), "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 16}, True),
    ({"model_type": "qwen3", **dict(SMALL, hidden_size=50), "num_attention_heads": 4,
      "num_key_value_heads": 4}, True),
])
def test_accepts_what_transformers_accepts(tmp_path, cfg, accepted):
    write_config(tmp_path, cfg)
    r = st_tool("config", tmp_path, check=False)
    assert (r.returncode == 0) == accepted, r.stderr
    if accepted:
        hf, inv_freq = hf_view(tmp_path)
        compare(json.loads(r.stdout), hf, inv_freq)
    else:
        with pytest.raises(Exception):
            AutoConfig.from_pretrained(tmp_path)
        assert "hidden_size" in r.stderr


def test_nan_rejected_naming_the_field(tmp_path):
    # Python's json writes NaN, which is not JSON: chord must say which field holds it.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **SMALL,
                                                      "rope_theta": float("nan")}))
    r = st_tool("config", tmp_path, check=False)
    assert r.returncode == 1 and "rope_theta" in r.stderr, r.stderr

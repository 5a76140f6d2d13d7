"""safetensors files (issue 15): relpos.save/load by suffix, the torch name map
of TransformerLM, and round trips through torch with identical logits.

The torch twin below is written from torch primitives in the layout of
relpos.models.TORCH_NAME_MAP: token embedding, pre-LN blocks (LayerNorm, q/k/v/o
projections with biases, ALiBi or interleaved RoPE, causal softmax attention,
GELU (tanh) MLP), a final LayerNorm and an output head tied to the embedding.
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file as np_load_file  # a run-time dependency of relpos

import relpos
from relpos.models import TORCH_NAME_MAP, TransformerLM, from_torch_names, to_torch_names

CFG = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4)


# ------------------------------------------------------------------ numpy side

def test_save_by_suffix_and_load_back(tmp_path):
    model = TransformerLM(**CFG, encoding="t5", seed=3)
    path = tmp_path / "m.safetensors"
    relpos.save(model, path)
    # a real safetensors file: the package's own reader agrees
    raw = np_load_file(str(path))
    sd = model.state_dict()
    assert set(raw) == set(sd)
    back = relpos.load(path)
    assert isinstance(back, dict) and set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    fresh = TransformerLM(**CFG, encoding="t5", seed=9)
    fresh.load_state_dict(back)
    ids = np.random.default_rng(0).integers(0, CFG["vocab_size"], (2, 9))
    assert np.array_equal(fresh(ids).numpy(), model(ids).numpy())
    # the other suffix still writes the relpos format
    relpos.save(model, tmp_path / "m.relpos")
    with open(tmp_path / "m.relpos", "rb") as f:
        assert f.read(2) == b"PK"


def test_dtypes_layouts_and_shapes(tmp_path):
    arrays = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.linspace(0, 1, 5),
        "f16": np.array([1.5, -2.0], np.float16),
        "i64": np.array([-(2**62), 2**62], np.int64),
        "u8": np.arange(4, dtype=np.uint8),
        "b": np.array([True, False, True]),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">f4"),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "tensor": relpos.Tensor(np.ones(2, np.float32)),
    }
    path = tmp_path / "a.safetensors"
    relpos.save(arrays, path)
    back = relpos.load(path)
    for k, v in arrays.items():
        v = v.data if isinstance(v, relpos.Tensor) else v
        assert back[k].shape == v.shape and np.array_equal(back[k], v), k
        assert back[k].dtype == v.dtype.newbyteorder("<") if v.dtype.byteorder == ">" else back[k].dtype == v.dtype
    assert back["big_endian"].dtype == np.dtype("<f4")


def test_save_rejects_what_safetensors_cannot_hold(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="cannot save opt to .safetensors: it holds arrays only"):
        relpos.save({"w": np.zeros(2), "opt": {"lr": 1}}, p)
    with pytest.raises(TypeError, match="step .* arrays only"):
        relpos.save({"step": 3}, p)
    with pytest.raises(TypeError, match="complex64 has no safetensors equivalent"):
        relpos.save({"c": np.zeros(2, np.complex64)}, p)
    with pytest.raises(TypeError, match="names must be str"):
        relpos.save({1: np.zeros(2)}, p)
    with pytest.raises(ValueError, match="__metadata__"):
        relpos.save({"__metadata__": np.zeros(2)}, p)
    with pytest.raises(TypeError, match="flat mapping"):
        relpos.save([np.zeros(2)], p)
    assert not p.exists()


def test_atomic_and_no_leftovers(tmp_path, monkeypatch):
    from relpos import serialization
    p = tmp_path / "w.safetensors"
    relpos.save({"w": np.ones(3, np.float32)}, p)

    def boom(f, tensors):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "_write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        relpos.save({"w": np.zeros(3, np.float32)}, p)
    assert np.all(relpos.load(p)["w"] == 1)
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_corrupt_safetensors_are_checkpoint_errors(tmp_path):
    p = tmp_path / "w.safetensors"
    relpos.save({"w": np.arange(6, dtype=np.float32)}, p)
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    cases = {
        "truncated": raw[:-5],
        "bad json": raw[:8] + b"{" * n + raw[8 + n:],
        "offsets": _with_header(header, raw, n, lambda h: h["w"].__setitem__("data_offsets", [0, 999])),
        "dtype": _with_header(header, raw, n, lambda h: h["w"].__setitem__("dtype", "Q9")),
        "fp8": _with_header(header, raw, n, lambda h: h["w"].update(dtype="F8_E4M3", shape=[24])),
        "length": (10**9).to_bytes(8, "little") + raw[8:],
        # found by the fuzzer: safetensors accepts 70 dimensions, numpy cannot hold them
        "ndim": _with_header(header, raw, n, lambda h: h["w"].__setitem__("shape", [1] * 69 + [6])),
    }
    for what, data in cases.items():
        bad = tmp_path / f"{what.replace(' ', '_')}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(relpos.CheckpointError, match=repr(str(bad))[1:-1]) as e:
            relpos.load(bad)
        assert "unreadable" not in str(e.value), (what, e.value)  # each has its own message
    # the suffix says safetensors, the bytes say nothing known
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(relpos.CheckpointError, match="not a relpos file, nor a safetensors file"):
        relpos.load(junk)


def _with_header(header, raw, n, edit):
    h = json.loads(json.dumps(header))
    edit(h)
    body = json.dumps(h).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body + raw[8 + n:]


def test_bf16_is_widened_to_float32(tmp_path):
    # bfloat16 written by hand (numpy has no such dtype): the top half of each float32
    vals = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], np.float32)
    top = (vals.view(np.uint32) >> 16).astype("<u2")
    header = {"x": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, top.nbytes]},
              "y": {"dtype": "F32", "shape": [1], "data_offsets": [top.nbytes, top.nbytes + 4]}}
    body = json.dumps(header).encode()
    p = tmp_path / "bf.safetensors"
    p.write_bytes(len(body).to_bytes(8, "little") + body + top.tobytes() + np.float32(7).tobytes())
    back = relpos.load(p)
    assert back["x"].dtype == np.float32 and np.array_equal(back["x"], vals.reshape(2, 3), equal_nan=True)
    assert back["y"].tolist() == [7.0]


def test_bf16_header_is_parsed_once_per_file(tmp_path, monkeypatch):
    # a checkpoint stored in bfloat16 has hundreds of tensors: reading the header once
    # per tensor made loading quadratic (3000 tensors: 10 s, now 0.02 s)
    import relpos.serialization as ser
    n = 60
    header = {f"w{i}": {"dtype": "BF16", "shape": [2], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
    body = json.dumps(header).encode()
    p = tmp_path / "many.safetensors"
    top = (np.arange(2 * n, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    p.write_bytes(len(body).to_bytes(8, "little") + body + top.tobytes())
    calls = []
    real = ser.json.loads
    monkeypatch.setattr(ser.json, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    back = relpos.load(p)
    assert len(calls) == 1
    assert [back[f"w{i}"].tolist() for i in (0, n - 1)] == [[0.0, 1.0], [2.0 * n - 2, 2.0 * n - 1]]


# ------------------------------------------------------------------ the name map

@pytest.mark.parametrize("encoding", ["rope", "alibi", "t5", "learned", "fire", "shaw", "sinusoidal"])
@pytest.mark.parametrize("tie", [True, False])
def test_name_map_round_trip(encoding, tie):
    model = TransformerLM(**CFG, encoding=encoding, max_len=32, tie_weights=tie)
    sd = model.state_dict()
    t = model.torch_state_dict()
    assert len(set(t)) == len(t)
    assert ("lm_head.weight" in t) == (not tie)
    assert all(not k.startswith(("blocks.", "tok_emb.", "norm_f.")) for k in t), list(t)
    assert list(from_torch_names(t)) == list(sd)
    assert list(to_torch_names(sd)) == list(t)
    for k, v in from_torch_names(t).items():
        assert np.array_equal(v, sd[k])
    other = TransformerLM(**CFG, encoding=encoding, max_len=32, tie_weights=tie, seed=5)
    other.load_torch_state_dict(t)
    for k, v in other.state_dict().items():
        assert np.array_equal(v, sd[k]), k


def test_name_map_table():
    """Each documented row, spelled out (the names the torch twin below uses)."""
    expect = {
        "tok_emb.weight": "embed_tokens.weight",
        "pos.weight": "embed_positions.weight",
        "blocks.0.norm1.weight": "layers.0.input_layernorm.weight",
        "blocks.11.attn.q_proj.bias": "layers.11.self_attn.q_proj.bias",
        "blocks.1.attn.k_proj.weight": "layers.1.self_attn.k_proj.weight",
        "blocks.1.attn.v_proj.weight": "layers.1.self_attn.v_proj.weight",
        "blocks.1.attn.out_proj.weight": "layers.1.self_attn.o_proj.weight",
        "blocks.0.attn.encoding.table": "layers.0.self_attn.encoding.table",
        "blocks.0.norm2.bias": "layers.0.post_attention_layernorm.bias",
        "blocks.0.fc1.weight": "layers.0.mlp.up_proj.weight",
        "blocks.0.fc2.bias": "layers.0.mlp.down_proj.bias",
        "norm_f.weight": "norm.weight",
        "lm_head.weight": "lm_head.weight",
        "head.bias": "head.bias",
        "something.else": "something.else",
    }
    assert to_torch_names(dict.fromkeys(expect)) == dict.fromkeys(expect.values())
    assert from_torch_names(dict.fromkeys(expect.values())) == dict.fromkeys(expect)
    assert len(TORCH_NAME_MAP) == 14


def test_load_torch_state_dict_errors():
    model = TransformerLM(**CFG, encoding="alibi")
    t = model.torch_state_dict()
    t["lm_head.weight"] = t["embed_tokens.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight differs from embed_tokens.weight"):
        model.load_torch_state_dict(t)
    t["lm_head.weight"] = t["embed_tokens.weight"].copy()
    model.load_torch_state_dict(t)  # a tied head stored twice (torch's own state_dict) is accepted
    t = model.torch_state_dict()
    t["layers.9.mlp.up_proj.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="unexpected keys: layers.9.mlp.up_proj.weight"):
        model.load_torch_state_dict(t)
    del t["layers.9.mlp.up_proj.weight"]
    del t["norm.bias"]
    with pytest.raises(ValueError, match="missing keys: norm.bias"):
        model.load_torch_state_dict(t)
    res = model.load_torch_state_dict(dict(t, extra=np.zeros(1)), strict=False)
    assert res.missing_keys == ["norm.bias"] and res.unexpected_keys == ["extra"]
    t["norm.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"norm_f.bias: expected shape \(32,\), got \(5,\)"):
        model.load_torch_state_dict(t)


# ------------------------------------------------------------------ through torch

def _torch():
    return pytest.importorskip("torch")


def torch_twin(vocab_size, d_model, n_layers, n_heads, encoding, d_ff=None):
    """The relpos TransformerLM written in torch, with the TORCH_NAME_MAP names."""
    torch = _torch()
    nn = torch.nn
    TF = torch.nn.functional
    d_ff = d_ff or 4 * d_model
    D = d_model // n_heads

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
            self.v_proj, self.o_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = (p(x).view(B, T, n_heads, D).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
            i = torch.arange(T, dtype=torch.float64)
            if encoding == "rope":   # interleaved pairs (x_2k, x_2k+1), theta_k = 10000^(-2k/D)
                inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
                ang = i[:, None] * inv[None, :]
                cos, sin = torch.cos(ang).float(), torch.sin(ang).float()

                def rot(t):
                    a, b = t[..., 0::2], t[..., 1::2]
                    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
                q, k = rot(q), rot(k)
            logits = (q @ k.transpose(-1, -2)) / D ** 0.5
            if encoding == "alibi":  # -m_h (i - j), m_h = 2^(-8 h / H) for h = 1..H
                slopes = 2.0 ** (-8.0 * torch.arange(1, n_heads + 1, dtype=torch.float64) / n_heads)
                logits = logits + (-slopes[:, None, None] * (i[:, None] - i[None, :])).float()
            causal = torch.ones(T, T, dtype=torch.bool).triu(1)
            p = torch.softmax(logits.masked_fill(causal, float("-inf")), dim=-1)
            return self.o_proj((p @ v).transpose(1, 2).reshape(B, T, d_model))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.up_proj, self.down_proj = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

        def forward(self, x):
            return self.down_proj(TF.gelu(self.up_proj(x), approximate="tanh"))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm, self.self_attn = nn.LayerNorm(d_model), Attention()
            self.post_attention_layernorm, self.mlp = nn.LayerNorm(d_model), MLP()

        def forward(self, x):
            x = x + self.self_attn(self.input_layernorm(x))
            return x + self.mlp(self.post_attention_layernorm(x))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab_size, d_model)
            self.layers = nn.ModuleList([Layer() for _ in range(n_layers)])
            self.norm = nn.LayerNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
            self.lm_head.weight = self.embed_tokens.weight   # tied

        def forward(self, ids):
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(self.norm(x))

    return LM()


def _randomise(tmodel, seed):
    """Random weights everywhere, norms included (a fresh LayerNorm is 1 and 0, which would hide a swap)."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tmodel.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0))


IDS = np.random.default_rng(7).integers(0, CFG["vocab_size"], (3, 17))


@pytest.mark.parametrize("encoding", ["alibi", "rope"])
def test_torch_to_relpos_through_safetensors(tmp_path, encoding):
    torch = _torch()
    from safetensors.torch import save_file
    tmodel = torch_twin(encoding=encoding, **CFG)
    _randomise(tmodel, 1)
    sd = tmodel.state_dict()
    # the tied head shares memory with the embedding: safetensors stores it once, as HF files do
    sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    path = tmp_path / "torch.safetensors"
    save_file(sd, str(path))
    loaded = relpos.load(path)
    assert all(v.dtype == np.float32 for v in loaded.values())
    model = TransformerLM(**CFG, encoding=encoding, seed=11)
    model.load_torch_state_dict(loaded)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(IDS)).numpy()
    got = model(IDS).numpy()
    scale = np.abs(want).max()
    assert scale > 1.0, "the logits must not be trivially small"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("encoding", ["alibi", "rope"])
def test_relpos_to_torch_through_safetensors(tmp_path, encoding):
    torch = _torch()
    from safetensors.torch import load_file, load_model
    model = TransformerLM(**CFG, encoding=encoding, seed=4)
    rng = np.random.default_rng(2)
    for p in model.parameters():  # GPT-2 init leaves norms at 1 and biases at 0: randomise everything
        p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * (0.3 if p.ndim > 1 else 0.5) \
            + (1.0 if p.ndim == 1 else 0.0)
    path = tmp_path / "relpos.safetensors"
    relpos.save(model.torch_state_dict(), path)
    tmodel = torch_twin(encoding=encoding, **CFG)
    missing, unexpected = load_model(tmodel, str(path))   # handles the tied head
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    # and with torch's plain reader + load_state_dict
    tmodel2 = torch_twin(encoding=encoding, **CFG)
    res = tmodel2.load_state_dict(load_file(str(path)), strict=False)
    assert res.missing_keys == ["lm_head.weight"] and not res.unexpected_keys
    got = model(IDS).numpy()
    with torch.no_grad():
        for t in (tmodel, tmodel2):
            want = t(torch.from_numpy(IDS)).numpy()
            np.testing.assert_allclose(want, got, rtol=1e-5, atol=1e-5 * np.abs(got).max())


def test_load_state_dict_takes_torch_tensors():
    torch = _torch()
    tmodel = torch_twin(encoding="alibi", **CFG)
    _randomise(tmodel, 3)
    model = TransformerLM(**CFG, encoding="alibi")
    # torch's own state_dict: tensors that require grad (parameters), the tied head under both names
    params = dict(tmodel.named_parameters())
    assert params["embed_tokens.weight"].requires_grad
    model.load_torch_state_dict(dict(tmodel.state_dict(keep_vars=True)))
    for k, v in model.torch_state_dict().items():
        assert np.array_equal(v, params[k].detach().numpy()), k
    # relpos names, torch values, straight into Module.load_state_dict; bfloat16 is widened
    sd = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in model.state_dict().items()}
    other = TransformerLM(**CFG, encoding="alibi", seed=8)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        assert np.array_equal(v, sd[k].float().numpy()), k

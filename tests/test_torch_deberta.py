"""DeBERTa against HF transformers' DisentangledSelfAttention (DeBERTa-v2), written
here from torch primitives step by step as HF computes it (transformers is not
installed, and is not needed): query/key/value projections, a 1/sqrt(3 D) scale
on all three terms, c2p gathered at clamp(δ + span), p2c gathered on the key side
at clamp(-δ + span) and transposed, optional log buckets. relpos's default
(p2c="official") must give the same attention output and gradients.

Departure kept out of the comparison: HF's position projections have a bias,
relpos's do not (set to zero here)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import relpos  # noqa: E402
from relpos import encodings as E  # noqa: E402
from relpos import nn


@pytest.fixture(autouse=True)
def _torch_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def hf_log_bucket(rel, bucket_size, max_position):
    # HF make_log_bucket_position, in torch
    sign = torch.sign(rel)
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), torch.tensor(mid - 1).type_as(rel), torch.abs(rel))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, rel.type_as(log_pos), log_pos * sign).long()


def hf_disentangled(x, w, H, span, buckets=-1, max_position=-1):
    """HF DebertaV2 DisentangledSelfAttention (relative_attention, pos_att_type c2p|p2c,
    share_att_key False, no dropout, no mask) followed by the output projection.
    x (B, T, d) -> (B, T, d); w: dict of torch weights."""
    B, T, d = x.shape
    D = d // H

    def heads(t):  # (B', T', H*D) -> (B'*H, T', D)
        return t.view(t.shape[0], t.shape[1], H, D).permute(0, 2, 1, 3).reshape(-1, t.shape[1], D)

    q = heads(x @ w["Wq"].T + w["bq"])
    k = heads(x @ w["Wk"].T + w["bk"])
    v = heads(x @ w["Wv"].T + w["bv"])
    scale = math.sqrt(D * 3)
    scores = torch.bmm(q, k.transpose(-1, -2)) / scale
    ids = torch.arange(T)
    rel = ids[:, None] - ids[None, :]
    if buckets > 0:
        rel = hf_log_bucket(rel, buckets, max_position)
    rel_emb = w["rel"][:2 * span].unsqueeze(0)
    pos_k = heads(rel_emb @ w["Wpk"].T).repeat(B, 1, 1)   # (B*H, 2span, D)
    pos_q = heads(rel_emb @ w["Wpq"].T).repeat(B, 1, 1)
    c2p = torch.bmm(q, pos_k.transpose(-1, -2))
    c2p = torch.gather(c2p, -1, torch.clamp(rel + span, 0, 2 * span - 1).expand(B * H, T, T))
    p2c = torch.bmm(k, pos_q.transpose(-1, -2))
    p2c = torch.gather(p2c, -1, torch.clamp(-rel + span, 0, 2 * span - 1).expand(B * H, T, T)).transpose(-1, -2)
    scores = scores + c2p / scale + p2c / scale
    ctx = torch.bmm(torch.softmax(scores, -1), v)
    ctx = ctx.view(B, H, T, D).permute(0, 2, 1, 3).reshape(B, T, d)
    return ctx @ w["Wo"].T + w["bo"]


@pytest.mark.parametrize("T,opts", [(7, dict(k=4)), (6, dict(k=16)),
                                    (14, dict(position_buckets=4, max_relative_positions=8))])
def test_deberta_matches_hf_disentangled_attention(T, opts):
    rng = np.random.default_rng(0)
    d, H = 12, 3
    enc = E.get("deberta", n_heads=H, head_dim=d // H, d_model=d, seed=1, **opts)
    for p in (enc.P, enc.W_kr, enc.W_qr):
        p.data[...] = rng.normal(0, 0.5, p.shape).astype(np.float32)
    mha = nn.MultiHeadAttention(d, H, encoding=enc, causal=False, seed=2)
    x = rng.standard_normal((2, T, d)).astype(np.float32)
    xt = relpos.Tensor(x, requires_grad=True)
    out = mha(xt)
    ((out + 1.0) * (out + 1.0)).mean().backward()

    span = enc.k
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)  # noqa: E731
    w = {"Wq": t(mha.q_proj.weight.data), "bq": t(mha.q_proj.bias.data), "Wk": t(mha.k_proj.weight.data),
         "bk": t(mha.k_proj.bias.data), "Wv": t(mha.v_proj.weight.data), "bv": t(mha.v_proj.bias.data),
         "Wo": t(mha.out_proj.weight.data), "bo": t(mha.out_proj.bias.data), "rel": t(enc.P.data),
         # HF's (H*D, d) projection is relpos's per-head (H, p_dim, D) stacked and transposed
         "Wpk": t(enc.W_kr.data.transpose(0, 2, 1).reshape(d, d)),
         "Wpq": t(enc.W_qr.data.transpose(0, 2, 1).reshape(d, d))}
    xt_t = t(x)
    want = hf_disentangled(xt_t, w, H, span, opts.get("position_buckets", -1),
                           opts.get("max_relative_positions", -1))
    np.testing.assert_allclose(out.data, want.detach().numpy(), rtol=1e-5, atol=1e-5)
    ((want + 1.0) ** 2).mean().backward()
    np.testing.assert_allclose(xt.grad, xt_t.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(enc.P.grad, w["rel"].grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(enc.W_kr.grad, w["Wpk"].grad.numpy().reshape(H, d // H, d).transpose(0, 2, 1),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(enc.W_qr.grad, w["Wpq"].grad.numpy().reshape(H, d // H, d).transpose(0, 2, 1),
                               rtol=1e-4, atol=1e-6)


def test_paper_convention_differs_from_hf():
    # the other convention is really another model: same weights, different output
    rng = np.random.default_rng(3)
    d, H, T = 8, 2, 6
    outs = []
    x = rng.standard_normal((1, T, d)).astype(np.float32)
    for p2c in ("official", "paper"):
        enc = E.get("deberta", n_heads=H, head_dim=4, d_model=d, k=3, seed=1, p2c=p2c)
        for p in (enc.P, enc.W_kr, enc.W_qr):
            p.data[...] = np.random.default_rng(5).normal(0, 0.5, p.shape).astype(np.float32)
        mha = nn.MultiHeadAttention(d, H, encoding=enc, causal=False, seed=2)
        outs.append(mha(relpos.Tensor(x)).data)
    assert np.abs(outs[0] - outs[1]).max() > 1e-3

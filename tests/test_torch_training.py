"""Training against PyTorch: the same small models, from the same initial
weights, trained 20 AdamW steps (plus SGD and clipping variants) in relpos and
in torch, give the same losses (1e-5 relative) and the same final weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import relpos  # noqa: E402
from relpos import functional as F  # noqa: E402
from relpos import nn, optim

STEPS = 20


@pytest.fixture(autouse=True)
def _torch_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _copy_into_torch(model, tmodel):
    """Copy relpos weights into a torch module with the same parameter names."""
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in tmodel.named_parameters():
            p.copy_(torch.from_numpy(sd[name]))
    assert set(sd) == {n for n, _ in tmodel.named_parameters()}


def _mse(y, t):
    d = y - relpos.Tensor(t)
    return (d * d).mean()


class TorchMLP(torch.nn.Module):
    def __init__(self, d_in, d_hidden, d_out):
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, d_hidden)
        self.act = torch.nn.GELU(approximate="tanh")
        self.fc2 = torch.nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TinyLM(nn.Module):
    def __init__(self, vocab, d, seed):
        super().__init__()
        g = np.random.default_rng(seed)
        self.emb = nn.Embedding(vocab, d, rng=g)
        nn.init.gpt2_normal_(self.emb.weight, rng=g)
        self.head = nn.Linear(d, vocab, rng=g)

    def forward(self, ids):
        return self.head(self.emb(ids))


class TorchTinyLM(torch.nn.Module):
    def __init__(self, vocab, d):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, ids):
        return self.head(self.emb(ids))


def _run_pair(model, tmodel, loss_fn, tloss_fn, batches, make_opt, make_topt, clip=None):
    opt, topt = make_opt(model.parameters()), make_topt(tmodel.parameters())
    losses, tlosses = [], []
    for xb, yb in batches:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        if clip is not None:
            n = optim.clip_grad_norm(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())

        topt.zero_grad()
        tl = tloss_fn(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tl.backward()
        if clip is not None:
            tn = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), clip)
            assert n == pytest.approx(float(tn), rel=1e-4)
        topt.step()
        tlosses.append(tl.item())
    return np.array(losses), np.array(tlosses)


def _mlp_batches(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((6, 3))
    out = []
    for _ in range(STEPS):
        x = rng.standard_normal((16, 6)).astype(np.float32)
        out.append((x, np.tanh(x @ w).astype(np.float32)))
    return out


@pytest.mark.parametrize("opt_name", ["adamw", "sgd", "adamw_clip"])
def test_mlp_mse_training_matches_torch(opt_name):
    model = nn.MLP(6, 16, 3, activation="gelu", seed=0)
    tmodel = TorchMLP(6, 16, 3)
    _copy_into_torch(model, tmodel)
    if opt_name == "sgd":
        make = lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)  # noqa: E731
        tmake = lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)  # noqa
    else:
        make = lambda ps: optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)  # noqa: E731
        tmake = lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)  # noqa
    losses, tlosses = _run_pair(model, tmodel, _mse, torch.nn.functional.mse_loss, _mlp_batches(1), make, tmake,
                                clip=0.5 if opt_name == "adamw_clip" else None)
    np.testing.assert_allclose(losses, tlosses, rtol=1e-5)
    assert losses[-1] < 0.7 * losses[0]  # it did learn
    tsd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, tsd[k], rtol=1e-4, atol=1e-5)


def test_mlp_cross_entropy_training_matches_torch():
    rng = np.random.default_rng(2)
    model = nn.MLP(5, 12, 4, activation="gelu", seed=3)
    tmodel = TorchMLP(5, 12, 4)
    _copy_into_torch(model, tmodel)
    batches = []
    for _ in range(STEPS):
        x = rng.standard_normal((24, 5)).astype(np.float32)
        batches.append((x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)))
    losses, tlosses = _run_pair(model, tmodel, F.cross_entropy, torch.nn.functional.cross_entropy, batches,
                                lambda ps: optim.AdamW(ps, lr=2e-2), lambda ps: torch.optim.AdamW(ps, lr=2e-2))
    np.testing.assert_allclose(losses, tlosses, rtol=1e-5)
    assert losses[-1] < losses[0]


def test_embedding_linear_cross_entropy_matches_torch():
    vocab, d = 11, 8
    model = TinyLM(vocab, d, seed=4)
    tmodel = TorchTinyLM(vocab, d)
    _copy_into_torch(model, tmodel)
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(STEPS):
        ids = rng.integers(0, vocab, size=(4, 7))
        batches.append((ids, (ids + 1) % vocab))  # next id = id + 1

    def loss_fn(logits, t):
        return F.cross_entropy(logits, t)

    def tloss_fn(logits, t):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), t.reshape(-1))

    losses, tlosses = _run_pair(model, tmodel, loss_fn, tloss_fn, batches,
                                lambda ps: optim.AdamW(ps, lr=5e-2, weight_decay=0.01),
                                lambda ps: torch.optim.AdamW(ps, lr=5e-2, weight_decay=0.01))
    np.testing.assert_allclose(losses, tlosses, rtol=1e-5)
    assert losses[-1] < 0.8 * losses[0]


def test_warmup_cosine_matches_torch_lambda_schedule():
    p = nn.Parameter(np.zeros(2))
    opt = optim.AdamW([p], lr=0.3)
    sched = optim.WarmupCosine(opt, warmup_steps=5, total_steps=30, min_lr=0.01)
    tp = torch.nn.Parameter(torch.zeros(2))
    topt = torch.optim.AdamW([tp], lr=0.3)
    import math

    def factor(s):
        if s < 5:
            return (s + 1) / 5
        t = min((s - 5) / 25, 1.0)
        return (0.01 + (0.3 - 0.01) * 0.5 * (1 + math.cos(math.pi * t))) / 0.3

    tsched = torch.optim.lr_scheduler.LambdaLR(topt, factor)
    for _ in range(35):
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
        topt.step()
        sched.step()
        tsched.step()

"""Call specs for fuzzing every relpos._C entry point (tests/test_fuzz_entrypoints.py).

A spec builds one *valid* call from a hypothesis `draw`: a list of `Arg`s (name,
value, kind, positional or keyword) and the shapes the result must have. The fuzz
test then mutates one argument at a time and checks the outcome.

Kinds:
  'f'    float32 input array           'i'   integer input array (ids, positions)
  'b'    bool input array (mask)       'd'   float64 input array (rope inv_freq)
  'out'  caller-provided out= array    'io'  array updated in place (optimizers)
  'n'    a size / count int            'ix'  a (sign, off) relative-index tuple
  'list' a list of input arrays        'iolist' a list of arrays updated in place
  's'    any other scalar (not mutated)
Array arguments marked `opt=True` accept None; `flex=True` means another shape of
that argument can be legal (broadcasting), so a changed shape may also succeed;
`strict=True` marks a read-only input documented to be C-contiguous and aligned
(the optimizers' grad, read in place next to the arrays they write): a strided or
misaligned one may be rejected with an error naming it, never misread.
"""
import numpy as np
from hypothesis import strategies as st


class Arg:
    def __init__(self, name, value, kind, pos=True, opt=False, flex=False, strict=False):
        self.name, self.value, self.kind, self.pos, self.opt, self.flex = name, value, kind, pos, opt, flex
        self.strict = strict

    def __repr__(self):
        v = self.value
        if isinstance(v, np.ndarray):
            v = f"ndarray{v.shape}:{v.dtype}"
        return f"{self.name}={v!r}[{self.kind}]"


ARRAY_KINDS = ("f", "i", "b", "d", "out", "io")


class Call:
    """args: list of Arg; shapes: expected shapes of the flattened result (None: unchecked)."""

    def __init__(self, args, shapes=None):
        self.args, self.shapes = args, shapes


SPECS = {}


def spec(name):
    def deco(fn):
        SPECS[name] = fn
        return fn
    return deco


def dim(draw, lo=0, hi=3):
    return draw(st.integers(lo, hi))


def rng(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def f32(r, *shape, lo=-1.0, hi=1.0):
    return r.uniform(lo, hi, size=shape).astype(np.float32)


def pos_f32(r, *shape):
    return r.uniform(0.2, 1.5, size=shape).astype(np.float32)


def maybe_out(draw, shape, name="out"):
    """An out= argument: absent (None) or a preallocated array."""
    if draw(st.booleans()):
        return [Arg(name, np.full(shape, 7.0, np.float32), "out", pos=False, opt=True)]
    return []


# ---------------------------------------------------------------- gemm area

def _gemm(draw, batched):
    r = rng(draw)
    M, K, N = dim(draw), dim(draw), dim(draw)
    Bt = (dim(draw),) if batched else ()
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a = f32(r, *Bt, *((K, M) if ta else (M, K)))
    b = f32(r, *Bt, *((N, K) if tb else (K, N)))
    args = [Arg("a", a, "f"), Arg("b", b, "f")]
    beta = draw(st.sampled_from([0.0, 0.5]))
    if beta != 0.0 or draw(st.booleans()):
        args.append(Arg("out", f32(r, *Bt, M, N), "out", pos=False, opt=beta == 0.0))
    args += [Arg("trans_a", ta, "s", pos=False), Arg("trans_b", tb, "s", pos=False),
             Arg("alpha", draw(st.sampled_from([1.0, -0.5])), "s", pos=False), Arg("beta", beta, "s", pos=False)]
    return Call(args, [Bt + (M, N)])


@spec("gemm")
def _(draw):
    return _gemm(draw, False)


@spec("gemm_batched")
def _(draw):
    return _gemm(draw, True)


@spec("linear_fwd")
def _(draw):
    r = rng(draw)
    M, K, N = dim(draw), dim(draw), dim(draw)
    args = [Arg("x", f32(r, M, K), "f"), Arg("w", f32(r, N, K), "f")]
    if draw(st.booleans()):
        args.append(Arg("b", f32(r, N), "f", opt=True))
    args += maybe_out(draw, (M, N))
    return Call(args, [(M, N)])


@spec("colsum")
def _(draw):
    r = rng(draw)
    M, N = dim(draw), dim(draw)
    return Call([Arg("x", f32(r, M, N), "f")] + maybe_out(draw, (N,)), [(N,)])


# ---------------------------------------------------------------- ops area

def lead(draw):
    return tuple(dim(draw, 0, 2) for _ in range(dim(draw, 0, 2)))


@spec("binary_fwd")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw, 1, 3),)
    bshape = draw(st.sampled_from([shape, (1,), shape[-1:]]))
    op = draw(st.sampled_from(["add", "sub", "mul", "div", "rsub", "rdiv"]))
    b = pos_f32(r, *bshape) if op in ("div", "rdiv") else f32(r, *bshape)
    a = pos_f32(r, *shape) if op == "rdiv" else f32(r, *shape)
    return Call([Arg("a", a, "f"), Arg("b", b, "f", flex=True), Arg("op", op, "s")] + maybe_out(draw, shape),
                [shape])


@spec("binary_bwd")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw, 1, 3),)
    bshape = draw(st.sampled_from([shape, (1,), shape[-1:]]))
    op = draw(st.sampled_from(["add", "sub", "mul", "div", "rsub", "rdiv"]))
    return Call([Arg("a", pos_f32(r, *shape), "f"), Arg("b", pos_f32(r, *bshape), "f", flex=True),
                 Arg("grad", f32(r, *shape), "f"), Arg("op", op, "s")], [shape, bshape])


@spec("scale")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw),)
    return Call([Arg("x", f32(r, *shape), "f"), Arg("alpha", 0.5, "s")] + maybe_out(draw, shape), [shape])


@spec("bias_add")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw),)
    return Call([Arg("x", f32(r, *shape), "f"), Arg("bias", f32(r, shape[-1]), "f")] + maybe_out(draw, shape),
                [shape])


@spec("sum_rows")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw),)
    return Call([Arg("x", f32(r, *shape), "f")], [shape[-1:]])


@spec("gelu_fwd")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw),)
    return Call([Arg("x", f32(r, *shape, lo=-3, hi=3), "f"),
                 Arg("approximate", draw(st.sampled_from(["tanh", "none"])), "s")] + maybe_out(draw, shape), [shape])


@spec("gelu_bwd")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw),)
    return Call([Arg("x", f32(r, *shape, lo=-3, hi=3), "f"), Arg("grad", f32(r, *shape), "f"),
                 Arg("approximate", draw(st.sampled_from(["tanh", "none"])), "s")] + maybe_out(draw, shape), [shape])


def _act(fwd):
    def build(draw):
        r = rng(draw)
        shape = lead(draw) + (dim(draw),)
        args = [Arg("x", f32(r, *shape, lo=-3, hi=3), "f")]
        if not fwd:
            args.append(Arg("grad", f32(r, *shape), "f"))
        return Call(args + maybe_out(draw, shape), [shape])
    return build


for _n in ("relu", "silu"):
    SPECS[_n + "_fwd"] = _act(True)
    SPECS[_n + "_bwd"] = _act(False)


@spec("layer_norm_fwd")
def _(draw):
    r = rng(draw)
    L, D = lead(draw), dim(draw)
    args = [Arg("x", f32(r, *L, D), "f")]
    if draw(st.booleans()):
        args += [Arg("weight", f32(r, D), "f", opt=True), Arg("bias", f32(r, D), "f", opt=True)]
    args += maybe_out(draw, L + (D,))
    return Call(args, [L + (D,), L, L])


@spec("layer_norm_bwd")
def _(draw):
    r = rng(draw)
    L, D = lead(draw), dim(draw, 1, 3)
    nx, nw, nb = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    args = [Arg("x", f32(r, *L, D), "f"), Arg("weight", f32(r, D), "f", opt=True), Arg("mean", f32(r, *L), "f"),
            Arg("rstd", pos_f32(r, *L), "f"), Arg("grad", f32(r, *L, D), "f"),
            Arg("need_x", nx, "s", pos=False), Arg("need_weight", nw, "s", pos=False),
            Arg("need_bias", nb, "s", pos=False)]
    return Call(args, None)


@spec("rms_norm_fwd")
def _(draw):
    r = rng(draw)
    L, D = lead(draw), dim(draw)
    args = [Arg("x", f32(r, *L, D), "f")]
    if draw(st.booleans()):
        args.append(Arg("weight", f32(r, D), "f", opt=True))
    return Call(args + maybe_out(draw, L + (D,)), [L + (D,), L])


@spec("rms_norm_bwd")
def _(draw):
    r = rng(draw)
    L, D = lead(draw), dim(draw, 1, 3)
    args = [Arg("x", f32(r, *L, D), "f"), Arg("weight", f32(r, D), "f", opt=True), Arg("rstd", pos_f32(r, *L), "f"),
            Arg("grad", f32(r, *L, D), "f"), Arg("need_x", draw(st.booleans()), "s", pos=False),
            Arg("need_weight", draw(st.booleans()), "s", pos=False)]
    return Call(args, None)


def _softmax(fwd, log):
    def build(draw):
        r = rng(draw)
        shape = lead(draw) + (dim(draw),)
        if fwd:
            args = [Arg("x", f32(r, *shape, lo=-4, hi=4), "f")]
        else:
            x = r.uniform(-2, 2, size=shape)
            with np.errstate(divide="ignore", invalid="ignore"):   # D = 0 rows
                y = x - np.log(np.exp(x).sum(-1, keepdims=True)) if log else np.exp(x) / np.exp(x).sum(-1, keepdims=True)
            args = [Arg("y", y.astype(np.float32), "f"), Arg("grad", f32(r, *shape), "f")]
        return Call(args + maybe_out(draw, shape), [shape])
    return build


SPECS["softmax_fwd"] = _softmax(True, False)
SPECS["softmax_bwd"] = _softmax(False, False)
SPECS["log_softmax_fwd"] = _softmax(True, True)
SPECS["log_softmax_bwd"] = _softmax(False, True)


def _targets(draw, r, N, V):
    t = r.integers(0, max(V, 1), size=N).astype(np.int64)
    if V == 0:
        t[:] = -100
    if N and draw(st.booleans()):
        t[0] = -100
    return t


@spec("cross_entropy_fwd")
def _(draw):
    r = rng(draw)
    N, V = dim(draw), dim(draw, 1, 4)
    return Call([Arg("logits", f32(r, N, V, lo=-3, hi=3), "f"), Arg("targets", _targets(draw, r, N, V), "i")],
                [(), (N,), ()])


@spec("cross_entropy_bwd")
def _(draw):
    r = rng(draw)
    N, V = dim(draw), dim(draw, 1, 4)
    x = f32(r, N, V, lo=-3, hi=3)
    lse = np.log(np.exp(x.astype(np.float64)).sum(-1)).astype(np.float32)
    t = _targets(draw, r, N, V)
    return Call([Arg("logits", x, "f"), Arg("targets", t, "i"), Arg("lse", lse, "f"), Arg("dloss", 1.0, "s"),
                 Arg("count", int((t != -100).sum()), "n")] + maybe_out(draw, (N, V)), [(N, V)])


@spec("embedding_fwd")
def _(draw):
    r = rng(draw)
    V, D = dim(draw, 1, 4), dim(draw)
    ids = r.integers(0, V, size=lead(draw) + (dim(draw),)).astype(np.int64)
    return Call([Arg("ids", ids, "i"), Arg("weight", f32(r, V, D), "f")] + maybe_out(draw, ids.shape + (D,)),
                [ids.shape + (D,)])


@spec("embedding_bwd")
def _(draw):
    r = rng(draw)
    V, D = dim(draw, 1, 4), dim(draw)
    ids = r.integers(0, V, size=lead(draw) + (dim(draw),)).astype(np.int64)
    return Call([Arg("ids", ids, "i"), Arg("grad", f32(r, *ids.shape, D), "f"), Arg("num_embeddings", V, "n")],
                [(V, D)])


def _dropout(bwd):
    def build(draw):
        r = rng(draw)
        shape = lead(draw) + (dim(draw),)
        return Call([Arg("grad" if bwd else "x", f32(r, *shape), "f"), Arg("p", draw(st.sampled_from([0.0, 0.3])), "s"),
                     Arg("seed", draw(st.integers(0, 2**64 - 1)), "s")] + maybe_out(draw, shape), [shape])
    return build


SPECS["dropout_fwd"] = _dropout(False)
SPECS["dropout_bwd"] = _dropout(True)


@spec("dropout_mask")
def _(draw):
    n = dim(draw, 0, 20)
    return Call([Arg("n", n, "n"), Arg("p", 0.5, "s"), Arg("seed", draw(st.integers(0, 2**64 - 1)), "s")], [(n,)])


# ---------------------------------------------------------------- optim area

@spec("sgd_step")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw),)
    mom = draw(st.sampled_from([0.0, 0.9]))
    buf = Arg("buf", f32(r, *shape), "io", opt=mom == 0.0) if mom or draw(st.booleans()) else Arg("buf", None, "s")
    return Call([Arg("param", f32(r, *shape), "io"), Arg("grad", f32(r, *shape), "f", strict=True), buf,
                 Arg("lr", 0.1, "s", pos=False), Arg("momentum", mom, "s", pos=False),
                 Arg("weight_decay", 0.01, "s", pos=False)], None)


@spec("adamw_step")
def _(draw):
    r = rng(draw)
    shape = lead(draw) + (dim(draw),)
    return Call([Arg("param", f32(r, *shape), "io"), Arg("grad", f32(r, *shape), "f", strict=True),
                 Arg("m", f32(r, *shape), "io"), Arg("v", pos_f32(r, *shape), "io"),
                 Arg("lr", 1e-2, "s", pos=False), Arg("weight_decay", 0.01, "s", pos=False),
                 Arg("step", draw(st.integers(1, 5)), "n", pos=False)], None)


@spec("adamw_multi")
def _(draw):
    r = rng(draw)
    shapes = [lead(draw) + (dim(draw),) for _ in range(dim(draw, 0, 3))]
    hyper = np.array([[1e-2, 0.9, 0.999, 1e-8, 0.01, draw(st.integers(1, 5))] for _ in shapes],
                     np.float64).reshape(len(shapes), 6)
    scale = draw(st.sampled_from([1.0, 0.5]))
    grads = [f32(r, *s) for s in shapes]
    return Call([Arg("params", [f32(r, *s) for s in shapes], "iolist"),
                 Arg("grads", grads, "iolist" if scale != 1.0 else "list"),
                 Arg("ms", [f32(r, *s) for s in shapes], "iolist"), Arg("vs", [pos_f32(r, *s) for s in shapes], "iolist"),
                 Arg("hyper", hyper, "d"), Arg("grad_scale", scale, "s", pos=False)], None)


@spec("scale_multi")
def _(draw):
    r = rng(draw)
    arrs = [f32(r, *lead(draw), dim(draw)) for _ in range(dim(draw, 0, 3))]
    return Call([Arg("arrays", arrs, "iolist"), Arg("factor", 0.5, "s")], None)


@spec("scale_")
def _(draw):
    r = rng(draw)
    return Call([Arg("array", f32(r, *lead(draw), dim(draw)), "io"), Arg("factor", 0.5, "s")], None)


# ---------------------------------------------------------------- posenc area

@spec("rope_tables")
def _(draw):
    r = rng(draw)
    P, T = dim(draw), dim(draw, 0, 5)
    inv = 10000.0 ** (-np.arange(P) / max(P, 1)) * r.uniform(0.5, 1.0)
    return Call([Arg("inv_freq", inv.astype(np.float64), "d"), Arg("T", T, "n"),
                 Arg("offset", draw(st.integers(0, 100)), "n", pos=False)], [(T, P), (T, P)])


@spec("xpos_scale")
def _(draw):
    P, T = dim(draw), dim(draw, 0, 5)
    return Call([Arg("n_pairs", P, "n"), Arg("T", T, "n"), Arg("offset", draw(st.integers(0, 100)), "n", pos=False),
                 Arg("inverse", draw(st.booleans()), "s", pos=False)], [(T, P)])


def _rotary(bwd):
    def build(draw):
        r = rng(draw)
        L, T, P = lead(draw), dim(draw), dim(draw, 0, 2)
        D = 2 * P + dim(draw, 0, 2)
        ang = r.uniform(-3, 3, size=(T, P))
        args = [Arg("grad" if bwd else "x", f32(r, *L, T, D), "f"), Arg("cos", np.cos(ang).astype(np.float32), "f"),
                Arg("sin", np.sin(ang).astype(np.float32), "f"), Arg("rotary_dim", 2 * P, "n", pos=False),
                Arg("layout", draw(st.sampled_from(["interleaved", "half"])), "s", pos=False)]
        if draw(st.booleans()):
            args.append(Arg("scale", pos_f32(r, T, P), "f", pos=False, opt=True))
        return Call(args + maybe_out(draw, L + (T, D)), [L + (T, D)])
    return build


SPECS["rotary_fwd"] = _rotary(False)
SPECS["rotary_bwd"] = _rotary(True)


@spec("sinusoidal_table")
def _(draw):
    r = rng(draw)
    T, d = dim(draw, 0, 5), 2 * dim(draw)
    args = [Arg("T", T, "n"), Arg("d_model", d, "n"), Arg("offset", draw(st.integers(0, 50)), "n", pos=False),
            Arg("layout", draw(st.sampled_from(["interleaved", "concat"])), "s", pos=False)]
    if draw(st.booleans()):
        args.append(Arg("positions", r.integers(0, 100, size=T).astype(np.int64), "i", pos=False, opt=True))
    return Call(args, [(T, d)])


def _complex(bwd):
    def build(draw):
        r = rng(draw)
        V, d = dim(draw, 1, 4), dim(draw)
        ids = r.integers(0, V, size=lead(draw)[:1] + (dim(draw),)).astype(np.int64)
        T = ids.shape[-1]
        args = [Arg("ids", ids, "i"), Arg("r", f32(r, V, d), "f"), Arg("omega", f32(r, V, d), "f"),
                Arg("theta", f32(r, V, d), "f"), Arg("positions", r.integers(0, 50, size=T).astype(np.int64), "i")]
        if bwd:
            args.append(Arg("grad", f32(r, *ids.shape, 2 * d), "f"))
            return Call(args, [(V, d)] * 3)
        return Call(args + maybe_out(draw, ids.shape + (2 * d,)), [ids.shape + (2 * d,)])
    return build


SPECS["complex_embed_fwd"] = _complex(False)
SPECS["complex_embed_bwd"] = _complex(True)


# ---------------------------------------------------------------- bias area

@spec("t5_bucket")
def _(draw):
    r = rng(draw)
    rel = r.integers(-300, 300, size=lead(draw) + (dim(draw),)).astype(np.int64)
    return Call([Arg("relative_position", rel, "i"), Arg("num_buckets", 32, "n"), Arg("max_distance", 128, "n"),
                 Arg("bidirectional", draw(st.booleans()), "s")], [rel.shape])


@spec("bias_sandwich_fwd")
def _(draw):
    r = rng(draw)
    H, n = dim(draw), dim(draw, 0, 6)
    d = r.integers(-40, 40, size=n).astype(np.int64)
    return Call([Arg("scales", pos_f32(r, H), "f"), Arg("d", d, "i"), Arg("dim", 2 * dim(draw, 1, 4), "n"),
                 Arg("first", draw(st.integers(0, 1)), "n")], [(H, n)])


def _cope(draw, r):
    B, H, Tq, Tk, D, npos = dim(draw, 0, 2), dim(draw, 0, 2), dim(draw), dim(draw), dim(draw), dim(draw, 1, 4)
    return [Arg("q", f32(r, B, H, Tq, D), "f"), Arg("k", f32(r, B, H, Tk, D), "f"), Arg("e", f32(r, npos, D), "f")], \
        (B, H, Tq, Tk)


@spec("cope_fwd")
def _(draw):
    r = rng(draw)
    args, shp = _cope(draw, r)
    return Call(args + [Arg("q_offset", dim(draw), "n")], [shp])


@spec("cope_bwd")
def _(draw):
    r = rng(draw)
    args, shp = _cope(draw, r)
    shapes = [a.value.shape for a in args]
    return Call(args + [Arg("grad", f32(r, *shp), "f"), Arg("q_offset", dim(draw), "n")], shapes)


# ---------------------------------------------------------------- attention (both paths)

def _attn_args(draw, r):
    B, H, Tq, Tk, D, Dv = (dim(draw, 0, 2), dim(draw, 1, 2), dim(draw, 0, 4), dim(draw, 0, 4), dim(draw, 0, 3),
                           dim(draw, 0, 3))
    args = [Arg("q", f32(r, B, H, Tq, D), "f"), Arg("k", f32(r, B, H, Tk, D), "f"), Arg("v", f32(r, B, H, Tk, Dv), "f")]
    kw = [Arg("causal", draw(st.booleans()), "s", pos=False),
          Arg("q_offset", max(Tk - Tq, 0) if draw(st.booleans()) else 0, "n", pos=False)]
    if draw(st.booleans()):
        kw.append(Arg("key_padding_mask", r.random((B, Tk)) < 0.3, "b", pos=False, opt=True))
    chan = draw(st.sampled_from(["none", "bias_vec", "bias_full", "shaw", "deberta", "pwl"]))
    Hr = draw(st.sampled_from([1, H]))
    if chan == "bias_vec":
        R = Tq + Tk + 1
        kw += [Arg("bias_vec", f32(r, Hr, R), "f", pos=False, opt=True),
               Arg("bias_ix", (1, Tk - 1), "ix", pos=False, opt=True)]
    elif chan == "bias_full":
        kw.append(Arg("bias_full", f32(r, draw(st.sampled_from([1, B])), H, Tq, Tk), "f", pos=False, opt=True))
    elif chan == "shaw":
        kk = dim(draw, 0, 2)
        kw += [Arg("relk", f32(r, Hr, 2 * kk + 1, D), "f", pos=False, opt=True),
               Arg("relk_ix", (-1, kk), "ix", pos=False, opt=True),
               Arg("relv", f32(r, Hr, 2 * kk + 1, Dv), "f", pos=False, opt=True),
               Arg("relv_ix", (-1, kk), "ix", pos=False, opt=True)]
    elif chan == "deberta":
        kk = dim(draw, 1, 2)
        kw += [Arg("qr", f32(r, B, H, Tq, D), "f", pos=False, opt=True),
               Arg("relk", f32(r, Hr, 2 * kk, D), "f", pos=False, opt=True),
               Arg("relk_ix", (1, kk), "ix", pos=False, opt=True),
               Arg("relq", f32(r, Hr, 2 * kk, D), "f", pos=False, opt=True),
               Arg("relq_ix", (-1, kk), "ix", pos=False, opt=True)]
    elif chan == "pwl":  # FIRE's channel: a bias piecewise linear in x = u[idx] * w[i]
        S = dim(draw, 1, 4)
        qo = next(a.value for a in kw if a.name == "q_offset")
        kw += [Arg("pwl_u", pos_f32(r, Tq + Tk + 1), "f", pos=False, opt=True),
               Arg("pwl_ix", (1, Tk - 1 - qo), "ix", pos=False, opt=True),
               Arg("pwl_w", pos_f32(r, Tq), "f", pos=False, opt=True),
               Arg("pwl_bp", np.sort(f32(r, S - 1, lo=0.0, hi=2.0)), "f", pos=False, opt=True),
               Arg("pwl_slope", f32(r, Hr, S), "f", pos=False, opt=True),
               Arg("pwl_icpt", f32(r, Hr, S), "f", pos=False, opt=True)]
    return args, kw, (B, H, Tq, Tk, D, Dv)


def _as_thirds(draw, r, args, B, H, Tq, Tk, D, Dv):
    """Sometimes (Tq = Tk, Dv = D) q, k, v become the thirds of one (B, T, 3, H, D) block,
    views as qkv_heads makes them: the fused path reads them in place."""
    if Tq != Tk or Dv != D or not draw(st.booleans()):
        return False
    y5 = f32(r, B, Tq, 3, H, D)
    for g, name in enumerate(("q", "k", "v")):
        a = next(a for a in args if a.name == name)
        a.value = y5[:, :, g].transpose(0, 2, 1, 3)
    return True


def _attn_fwd(mat):
    def build(draw):
        r = rng(draw)
        args, kw, (B, H, Tq, Tk, D, Dv) = _attn_args(draw, r)
        _as_thirds(draw, r, args, B, H, Tq, Tk, D, Dv)
        shapes = [(B, H, Tq, Dv), (B, H, Tq)]
        if mat and draw(st.booleans()):
            kw.append(Arg("return_weights", True, "s", pos=False))
            shapes.append((B, H, Tq, Tk))
        if not mat and draw(st.booleans()):  # out in the merged (B, Tq, H, Dv) layout
            kw.append(Arg("merged", True, "s", pos=False))
            shapes[0] = (B, Tq, H, Dv)
        return Call(args + kw, shapes)
    return build


def _attn_bwd(mat):
    def build(draw):
        import relpos._C as C
        r = rng(draw)
        args, kw, (B, H, Tq, Tk, D, Dv) = _attn_args(draw, r)
        packable = _as_thirds(draw, r, args, B, H, Tq, Tk, D, Dv) or (Tq == Tk and Dv == D)
        fwd = C.attention_mat_fwd if mat else C.attention_fwd
        merged = not mat and draw(st.booleans())  # out and dout (B, Tq, H, Dv)
        if merged:
            kw.append(Arg("merged", True, "s", pos=False))
        out, lse = fwd(*[a.value for a in args], **{a.name: a.value for a in kw})
        dout = f32(r, B, Tq, H, Dv) if merged else f32(r, B, H, Tq, Dv)
        if not mat and packable and draw(st.booleans()):  # dq, dk, dv in one (B, Tq, 3, H, D) block
            kw.append(Arg("packed_grads", True, "s", pos=False))
        elif draw(st.booleans()):
            # a tuple: the names are interned strings, whose refcounts the leak test must not watch
            kw.append(Arg("needs", ("q", "v"), "s", pos=False))
        return Call(args + [Arg("out", out, "f"), Arg("lse", lse, "f"), Arg("dout", dout, "f")] + kw, None)
    return build


SPECS["attention_fwd"] = _attn_fwd(False)
SPECS["attention_mat_fwd"] = _attn_fwd(True)
SPECS["attention_bwd"] = _attn_bwd(False)
SPECS["attention_mat_bwd"] = _attn_bwd(True)


# ---------------------------------------------------------------- perf area (fused training kernels)

@spec("add_layer_norm_fwd")
def _(draw):
    r = rng(draw)
    L, D = lead(draw), dim(draw)
    args = [Arg("x", f32(r, *L, D), "f"), Arg("y", f32(r, *L, D), "f"), Arg("weight", f32(r, D), "f"),
            Arg("bias", f32(r, D), "f")]
    return Call(args, [L + (D,), L + (D,), (int(np.prod(L)),), (int(np.prod(L)),)])


@spec("add_layer_norm_bwd")
def _(draw):
    r = rng(draw)
    L, D = lead(draw), dim(draw, 1, 3)
    N = int(np.prod(L))
    args = [Arg("s", f32(r, *L, D), "f"), Arg("weight", f32(r, D), "f"), Arg("mean", f32(r, N), "f"),
            Arg("rstd", pos_f32(r, N), "f"), Arg("dh", f32(r, *L, D), "f")]
    if draw(st.booleans()):
        args.append(Arg("ds", f32(r, *L, D), "f", opt=True))
    args += [Arg("need_x", draw(st.booleans()), "s", pos=False),
             Arg("need_weight", draw(st.booleans()), "s", pos=False),
             Arg("need_bias", draw(st.booleans()), "s", pos=False)]
    return Call(args, None)


@spec("linear_gelu_fwd")
def _(draw):
    r = rng(draw)
    M, K, N = dim(draw), dim(draw), dim(draw)
    args = [Arg("x", f32(r, M, K), "f"), Arg("weight", f32(r, N, K), "f")]
    if draw(st.booleans()):
        args.append(Arg("bias", f32(r, N), "f", opt=True))
    args.append(Arg("approximate", draw(st.sampled_from(["tanh", "none"])), "s", pos=False))
    return Call(args, [(M, N), (M, N)])


@spec("linear_gelu_bwd")
def _(draw):
    r = rng(draw)
    M, K, N = dim(draw), dim(draw), dim(draw)
    args = [Arg("x", f32(r, M, K), "f"), Arg("weight", f32(r, N, K), "f"), Arg("h", f32(r, M, N), "f"),
            Arg("da", f32(r, M, N), "f"),
            Arg("approximate", draw(st.sampled_from(["tanh", "none"])), "s", pos=False),
            Arg("need_x", draw(st.booleans()), "s", pos=False),
            Arg("need_weight", draw(st.booleans()), "s", pos=False),
            Arg("need_bias", draw(st.booleans()), "s", pos=False)]
    return Call(args, None)


def _heads(draw, r):
    B, T, H, P, G = dim(draw, 0, 2), dim(draw, 0, 3), dim(draw, 1, 2), dim(draw, 1, 2), dim(draw, 1, 3)
    Dh = 2 * P
    kw = []
    if draw(st.booleans()):
        rd = 2 * dim(draw, 1, P)
        kw = [Arg("rotate", dim(draw, 0, G), "s", pos=False), Arg("cos", f32(r, T, rd // 2), "f", pos=False),
              Arg("sin", f32(r, T, rd // 2), "f", pos=False), Arg("rotary_dim", rd, "n", pos=False),
              Arg("layout", draw(st.sampled_from(["interleaved", "half"])), "s", pos=False)]
    return (B, T, H, Dh, G), kw


@spec("heads_split")
def _(draw):
    r = rng(draw)
    (B, T, H, Dh, G), kw = _heads(draw, r)
    args = [Arg("y", f32(r, B, T, G * H * Dh), "f"), Arg("n_heads", H, "n"), Arg("groups", G, "s", pos=False)]
    return Call(args + kw, [(B, H, T, Dh)] * G)


@spec("heads_merge")
def _(draw):
    r = rng(draw)
    (B, T, H, Dh, G), kw = _heads(draw, r)
    xs = [f32(r, B, H, T, Dh) for _ in range(G)]
    return Call([Arg("xs", xs, "list")] + kw, [(B, T, G * H * Dh)])


@spec("heads_rotate")
def _(draw):
    r = rng(draw)
    (B, T, H, Dh, G), kw = _heads(draw, r)
    args = [Arg("y", f32(r, B, T, G * H * Dh), "io"), Arg("n_heads", H, "n"), Arg("groups", G, "s", pos=False),
            Arg("inverse", draw(st.booleans()), "s", pos=False)]
    return Call(args + kw, None)


# ---------------------------------------------------------------- the rest

@spec("grad_norm")
def _(draw):
    r = rng(draw)
    arrs = [f32(r, *lead(draw), dim(draw)) for _ in range(dim(draw, 0, 3))]
    return Call([Arg("arrays", arrs, "list")], [()])


# Entry points that are configuration, not kernels: called with their valid
# arguments and with wrong types by a separate test.
CONFIG_ENTRY_POINTS = {"config", "get_num_threads", "set_num_threads", "force_portable", "gemm_kernel",
                       "fma_peak_gflops", "back_off"}


class RandomDraw:
    """A stand-in for hypothesis' `draw` outside @given (leak checks, valgrind smoke):
    integers / booleans / sampled_from drawn from a seeded random.Random, biased to
    the largest sizes when `big=True` so the kernels have work to do."""

    def __init__(self, seed=0, big=True):
        import random
        self.r, self.big = random.Random(seed), big

    def __call__(self, strategy, label=None):
        w = getattr(strategy, "wrapped_strategy", strategy)
        if hasattr(w, "start") and hasattr(w, "end"):
            lo, hi = w.start, w.end
            if self.big and hi - lo <= 8:
                return hi
            return self.r.randint(lo, min(hi, lo + 2**31))
        if hasattr(w, "elements"):
            return self.r.choice(list(w.elements))
        if type(w).__name__ == "BooleansStrategy":
            return self.r.random() < 0.5
        raise TypeError(f"RandomDraw cannot draw from {strategy!r}")


def valid_call(name, seed=0, big=True):
    """One valid Call of entry point `name` outside hypothesis."""
    return SPECS[name](RandomDraw(seed, big))

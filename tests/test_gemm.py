"""GEMM area: _C.gemm / gemm_batched / linear_fwd / colsum / fma_peak_gflops and
relpos.functional.matmul / linear, against the float64 twins in reference.py."""
import numpy as np
import pytest
import reference as ref

import relpos
from relpos import _C
from relpos.functional import linear, matmul

PATHS = ["avx512", "avx2", "portable"]


@pytest.fixture(params=PATHS)
def path(request):
    """Run the test with each GEMM micro-kernel: AVX-512, AVX2 (SIMD paths) and
    the portable one (through force_portable, as every area does)."""
    name = request.param
    if name == "portable":
        _C.force_portable(True)
    else:
        try:
            _C.gemm_kernel(name)
        except ValueError:
            pytest.skip(f"this CPU or build has no {name} GEMM kernel")
    try:
        assert _C.gemm_kernel() == name
        yield name
    finally:
        _C.force_portable(False)
        _C.gemm_kernel("auto")


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def close(got, want, K):
    """float32 products of K terms of N(0,1) values: error grows like sqrt(K)."""
    tol = 2e-6 * max(K, 1) ** 0.5 * 8
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=tol)


SIZES = [(0, 5, 3), (5, 0, 3), (5, 3, 0), (1, 1, 1), (7, 7, 7), (1, 65, 7), (65, 1, 65), (7, 65, 1),
         (65, 65, 65), (150, 37, 300),
         (1, 300, 200), (4, 130, 77), (5, 200, 40),  # few-row direct path; packed with M < MR
         (6, 4200, 20),  # N > NC: two column blocks
         (300, 1, 130), (200, 3, 70)]  # few-column direct path


@pytest.mark.parametrize("M,N,K", SIZES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_matches_reference(path, rng, M, N, K, ta, tb):
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    got = _C.gemm(a, b, trans_a=ta, trans_b=tb)
    assert got.shape == (M, N) and got.dtype == np.float32
    close(got, ref.gemm(a, b, ta, tb), K)


@pytest.mark.parametrize("M,N,K", [(7, 7, 7), (65, 66, 67), (13, 3100, 260)])
def test_gemm_alpha_beta(path, rng, M, N, K):
    a, b, c = rand(rng, M, K), rand(rng, K, N), rand(rng, M, N)
    out = c.copy()
    res = _C.gemm(a, b, out, alpha=0.5, beta=-2.0)
    assert res is out
    close(out, ref.gemm(a, b, alpha=0.5, beta=-2.0, c=c), K)
    # alpha = 0: only the scaling of C
    out = c.copy()
    _C.gemm(a, b, out, alpha=0.0, beta=3.0)
    np.testing.assert_allclose(out, 3.0 * c, rtol=1e-6)


@pytest.mark.parametrize("M,N,K", [(5, 6, 7), (70, 70, 70)])
def test_beta_zero_does_not_read_out(path, rng, M, N, K):
    a, b = rand(rng, M, K), rand(rng, K, N)
    out = np.full((M, N), np.nan, np.float32)
    _C.gemm(a, b, out)
    assert np.isfinite(out).all()
    close(out, ref.gemm(a, b), K)
    out[:] = np.inf
    _C.gemm(a, b, out, alpha=0.0)  # alpha = beta = 0 gives zeros, not inf*0
    assert (out == 0).all()


def test_k_zero_gives_zeros_or_scaled_c(rng):
    a, b = rand(rng, 4, 0), rand(rng, 0, 3)
    np.testing.assert_array_equal(_C.gemm(a, b), np.zeros((4, 3), np.float32))
    c = rand(rng, 4, 3)
    out = c.copy()
    _C.gemm(a, b, out, beta=2.0)
    np.testing.assert_array_equal(out, 2.0 * c)


@pytest.mark.parametrize("Bt,M,N,K", [(3, 7, 5, 9), (4, 65, 33, 70), (1, 1, 1, 1), (0, 3, 3, 3), (2, 0, 3, 4),
                                     (2, 200, 230, 180)])  # the last: large products, one after another by the team
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_batched(path, rng, Bt, M, N, K, ta, tb):
    a = rand(rng, *((Bt, K, M) if ta else (Bt, M, K)))
    b = rand(rng, *((Bt, N, K) if tb else (Bt, K, N)))
    got = _C.gemm_batched(a, b, trans_a=ta, trans_b=tb)
    assert got.shape == (Bt, M, N)
    close(got, ref.gemm(a, b, ta, tb), K)
    c = rand(rng, Bt, M, N)
    out = c.copy()
    _C.gemm_batched(a, b, out, trans_a=ta, trans_b=tb, alpha=2.0, beta=0.5)
    close(out, ref.gemm(a, b, ta, tb, 2.0, 0.5, c), K)


@pytest.mark.parametrize("M,N,K", [(0, 4, 3), (1, 1, 1), (9, 5, 3), (70, 33, 65), (100, 70, 270), (7, 4200, 9)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_fwd(path, rng, M, N, K, with_bias):
    x, w = rand(rng, M, K), rand(rng, N, K)
    b = rand(rng, N) if with_bias else None
    got = _C.linear_fwd(x, w, b)
    assert got.shape == (M, N)
    close(got, ref.linear(x, w, b), K)
    out = np.full((M, N), np.nan, np.float32)
    assert _C.linear_fwd(x, w, b, out) is out
    close(out, ref.linear(x, w, b), K)


@pytest.mark.parametrize("M,N", [(0, 3), (3, 0), (1, 1), (7, 5), (300, 1100)])
def test_colsum(rng, M, N):
    x = rand(rng, M, N)
    got = _C.colsum(x)
    assert got.shape == (N,)
    np.testing.assert_allclose(got, ref.colsum(x), rtol=1e-5, atol=1e-5 * max(M, 1) ** 0.5)


@pytest.mark.parametrize("M,N", [(1, 1), (129, 64), (300, 77), (1024, 192), (257, 600)])
def test_colsum_simd_gives_the_portable_bits(rng, threads, M, N):
    """The AVX2 column sum keeps 64 columns' partial sums in registers: the same
    additions in the same order (rows in blocks of 128, blocks in order) as the
    portable loop, so the same bits, NaN, inf and -0 included, for any thread count."""
    if not relpos.config()["cpu_avx2_fma"]:
        pytest.skip("this CPU or build has no AVX2/FMA path")
    x = (rng.standard_normal((M, N)) * 10.0 ** rng.integers(-20, 20, (M, N))).astype(np.float32)
    x.flat[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -0.0]
    _C.force_portable(True)
    try:
        want = _C.colsum(x)
    finally:
        _C.force_portable(False)
    for n in (1, 2):
        got = threads(n, lambda: _C.colsum(x))
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan]), f"{n} threads"


def test_bit_identical_one_and_two_threads(path, threads, rng):
    a, b = rand(rng, 203, 610), rand(rng, 610, 150)
    c = rand(rng, 203, 150)
    x, w, bias = rand(rng, 97, 300), rand(rng, 70, 300), rand(rng, 70)
    a3, b3 = rand(rng, 5, 40, 300), rand(rng, 5, 300, 30)
    big3a, big3b = rand(rng, 3, 150, 270), rand(rng, 3, 270, 70)
    cs = rand(rng, 1000, 1500)
    g1, w1 = rand(rng, 2, 300), rand(rng, 700, 300)  # few-row direct path
    wide_x, wide_w, wide_b = rand(rng, 30, 40), rand(rng, 4300, 40), rand(rng, 4300)  # N > NC
    tall_x, tall_w = rand(rng, 700, 90), rand(rng, 1, 90)  # few-column direct path
    team_a, team_b = rand(rng, 2, 200, 180), rand(rng, 2, 180, 230)  # batched products shared by the team

    def run():
        out = c.copy()
        _C.gemm(a, b, out, alpha=0.7, beta=0.3)
        return [_C.gemm(a, b), _C.gemm(b, a, trans_a=True, trans_b=True), out,
                _C.linear_fwd(x, w, bias), _C.gemm_batched(a3, b3), _C.gemm_batched(big3a, big3b),
                _C.colsum(cs), _C.linear_fwd(g1, w1), _C.gemm(g1, w1.T.copy()),
                _C.linear_fwd(wide_x, wide_w, wide_b), _C.linear_fwd(tall_x, tall_w), _C.gemm(tall_x, tall_w.T.copy()),
                _C.gemm_batched(team_a, team_b)]

    one = threads(1, run)
    two = threads(2, run)
    for r1, r2 in zip(one, two):
        np.testing.assert_array_equal(r1, r2)


def test_inputs_not_modified(rng):
    a, b, c = rand(rng, 70, 80), rand(rng, 80, 90), rand(rng, 90)
    a0, b0, c0 = a.copy(), b.copy(), c.copy()
    _C.gemm(a, b)
    _C.gemm_batched(a[None], b[None], trans_a=False)
    _C.linear_fwd(a, b.T.copy(), c)
    _C.colsum(a)
    ta, tw, tb = relpos.Tensor(a, requires_grad=True), relpos.Tensor(b.T, requires_grad=True), relpos.Tensor(c)
    linear(ta, tw, tb).sum().backward()
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_array_equal(c, c0)


def test_noncontiguous_inputs_are_accepted(rng):
    a = rand(rng, 20, 30)[:, ::2]
    b = rand(rng, 40, 15).T
    close(_C.gemm(a, b), ref.gemm(a, b), 15)


# ---- bad inputs ----------------------------------------------------------

def test_bad_dtype_and_types(rng):
    a, b = rand(rng, 3, 4), rand(rng, 4, 5)
    with pytest.raises(TypeError, match="a must have dtype float32"):
        _C.gemm(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="b must be a numpy.ndarray"):
        _C.gemm(a, b.tolist())
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        _C.gemm(None, b)
    with pytest.raises(TypeError, match="trans_a must be a bool"):
        _C.gemm(a, b, trans_a=1)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.linear_fwd(a.astype(np.int64), b.T.copy())
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        _C.colsum([[1.0]])
    with pytest.raises(TypeError, match="out .output. must have dtype float32"):
        _C.gemm(a, b, np.zeros((3, 5), np.float64))


def test_bad_shapes(rng):
    a, b = rand(rng, 3, 4), rand(rng, 4, 5)
    with pytest.raises(ValueError, match=r"a must have shape \(M, K\).*got \(4,\)"):
        _C.gemm(a[0], b)
    with pytest.raises(ValueError, match=r"K=4 .*\(3, 4\).*K=5.*\(5, 4\)"):
        _C.gemm(a, b.T.copy())
    with pytest.raises(ValueError, match="inner dimensions"):
        _C.gemm(a, b, trans_a=True)
    with pytest.raises(ValueError, match="b must have shape"):
        _C.gemm_batched(a[None], b)
    with pytest.raises(ValueError, match="same batch size"):
        _C.gemm_batched(np.stack([a, a]), b[None])
    with pytest.raises(ValueError, match=r"out must have shape.*\(3, 5\).*got \(5, 3\)"):
        _C.gemm(a, b, np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"w must have shape \(N, K\)"):
        _C.linear_fwd(a, b)
    with pytest.raises(ValueError, match=r"b must have shape \(N,\)"):
        _C.linear_fwd(a, b.T.copy(), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \(M, N\)"):
        _C.colsum(a[0])


def test_bad_out(rng):
    a, b = rand(rng, 3, 4), rand(rng, 4, 5)
    ro = np.zeros((3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _C.gemm(a, b, ro)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.gemm(a, b, np.zeros((5, 3), np.float32).T)
    with pytest.raises(ValueError, match="beta=.* needs out="):
        _C.gemm(a, b, beta=1.0)
    with pytest.raises(ValueError, match="share memory with a"):
        sq = rand(rng, 4, 4)
        _C.gemm(sq, sq.copy(), sq)
    with pytest.raises(ValueError, match="seconds"):
        _C.fma_peak_gflops(seconds=-1.0)
    with pytest.raises(ValueError, match="threads"):
        _C.fma_peak_gflops(threads=-2)


def test_gemm_kernel_choice():
    with pytest.raises(ValueError, match="one of"):
        _C.gemm_kernel("sse9")
    with pytest.raises(TypeError, match="name must be a str"):
        _C.gemm_kernel(3)
    _C.force_portable(True)
    try:
        assert _C.gemm_kernel() == "portable"
    finally:
        _C.force_portable(False)
    assert _C.gemm_kernel("auto") in ("avx512", "avx2", "portable")


def test_fma_peak_positive(path):
    g = _C.fma_peak_gflops(threads=1, seconds=0.02)
    assert isinstance(g, float) and g > 0.1


# ---- Python API: matmul / linear and their backward ----------------------

def _fd_check(fn_relpos, fn_ref, arrays, rng, tol=2e-3):
    """Analytic gradients of sum(out * R) against central differences of the float64 twin."""
    ts = [relpos.Tensor(x, requires_grad=True) for x in arrays]
    out = fn_relpos(*ts)
    R = rand(rng, *out.shape)
    np.testing.assert_allclose(out.data, fn_ref(*arrays), rtol=1e-4, atol=1e-4)
    out.backward(R)
    for i, x in enumerate(arrays):
        def f(v, i=i):
            args = [np.asarray(a, np.float64) for a in arrays]
            args[i] = v
            return float((fn_ref(*args) * R).sum())
        num = ref.numgrad(f, x.astype(np.float64))
        np.testing.assert_allclose(ts[i].grad, num, rtol=tol, atol=tol)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 2, 3, 4), (2, 2, 4, 3)),
                                   ((2, 3, 4), (4, 5)), ((1, 1), (1, 1))])
def test_matmul_forward_backward(path, rng, sa, sb):
    _fd_check(matmul, ref.matmul, [rand(rng, *sa), rand(rng, *sb)], rng)


@pytest.mark.parametrize("xs,nout,bias", [((5, 4), 3, True), ((2, 3, 4), 5, True), ((4,), 2, False), ((6, 7), 1, True)])
def test_linear_forward_backward(path, rng, xs, nout, bias):
    arrays = [rand(rng, *xs), rand(rng, nout, xs[-1])] + ([rand(rng, nout)] if bias else [])
    _fd_check(linear, ref.linear, arrays, rng)


def test_linear_computes_only_needed_grads(rng):
    x = relpos.Tensor(rand(rng, 5, 4))  # no grad
    w = relpos.Tensor(rand(rng, 3, 4), requires_grad=True)
    b = relpos.Tensor(rand(rng, 3))      # no grad
    y = linear(x, w, b)
    g = rand(rng, 5, 3)
    y.backward(g)
    assert x.grad is None and b.grad is None
    close(w.grad, g.astype(np.float64).T @ x.data, 5)
    # with only x requiring grad, the backward must not touch w or b
    x2 = relpos.Tensor(rand(rng, 5, 4), requires_grad=True)
    from relpos._fn.linalg import Linear

    class Ctx:
        saved = (x2.data, w.data)
        needs_input_grad = (True, False, False)
        x_shape = (5, 4)
        has_bias = True
    dx, dw, db = Linear.backward(Ctx, g)
    assert dw is None and db is None
    close(dx, g.astype(np.float64) @ w.data, 3)


def test_matmul_and_linear_errors(rng):
    a, b = relpos.Tensor(rand(rng, 3, 4)), relpos.Tensor(rand(rng, 5, 6))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        matmul(a, b)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(3, 4, 5\)"):
        matmul(rand(rng, 2, 3, 4), rand(rng, 3, 4, 5))
    with pytest.raises(ValueError, match="at least 2-D"):
        matmul(rand(rng, 4), rand(rng, 4, 2))
    with pytest.raises(ValueError, match=r"in_features=4.*\(3, 4\).*got x \(2, 5\)"):
        linear(rand(rng, 2, 5), rand(rng, 3, 4))
    with pytest.raises(ValueError, match=r"bias must have shape .*\(3,\).*got bias \(4,\)"):
        linear(rand(rng, 2, 4), rand(rng, 3, 4), rand(rng, 4))
    with pytest.raises(TypeError):
        matmul(np.zeros((2, 2), np.complex64), rand(rng, 2, 2))


def test_tensor_matmul_operator(rng):
    a, b = rand(rng, 3, 4), rand(rng, 4, 2)
    out = relpos.Tensor(a) @ relpos.Tensor(b)
    close(out.data, ref.matmul(a, b), 4)


def test_concurrent_python_threads(rng):
    """The GIL is released around the core and the packing scratch is shared
    through an atomic cache: concurrent callers must still get right answers."""
    import threading

    pairs = [(rand(rng, 70 + 9 * i, 300), rand(rng, 300, 50 + 7 * i)) for i in range(4)]
    want = [_C.gemm(a, b) for a, b in pairs]
    errors = []

    def work(k):
        for r in range(15):
            a, b = pairs[(k + r) % len(pairs)]
            got = _C.gemm(a, b)
            if not np.array_equal(got, want[(k + r) % len(pairs)]):
                errors.append((k, r))

    ts = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        return None


def test_memory_does_not_grow(rng, threads):
    threads(1, _memory_check, rng)


def _memory_check(rng):
    if _rss_bytes() is None:
        pytest.skip("needs /proc/self/statm to read the resident size")
    a, b = rand(rng, 16, 300), rand(rng, 300, 400)   # ~0.85 MB of packing scratch per call
    w = b.T.copy()
    out = np.empty((16, 400), np.float32)
    for _ in range(20):
        _C.gemm(a, b, out)
    before = _rss_bytes()
    for _ in range(300):
        _C.gemm(a, b, out)
        _C.linear_fwd(a, w, None, out)
    grown = _rss_bytes() - before
    assert grown < 64 << 20, f"resident memory grew by {grown / 2**20:.1f} MiB over 600 calls"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st


@settings(max_examples=40, deadline=None)
@given(M=st.integers(0, 40), N=st.integers(0, 70), K=st.integers(0, 300), ta=st.booleans(), tb=st.booleans(),
       alpha=st.sampled_from([1.0, -0.5, 2.0]), beta=st.sampled_from([0.0, 1.0, -1.5]), seed=st.integers(0, 2**16))
def test_gemm_property(M, N, K, ta, tb, alpha, beta, seed):
    r = np.random.default_rng(seed)
    a = r.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = r.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    c = r.standard_normal((M, N)).astype(np.float32)
    out = c.copy()
    _C.gemm(a, b, out, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
    close(out, ref.gemm(a, b, ta, tb, alpha, beta, c), K)


def test_linear_and_matmul_match_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, b = rand(rng, 2, 5, 8), rand(rng, 6, 8), rand(rng, 6)
    m = rand(rng, 2, 6, 3)
    tx, tw, tb, tm = (relpos.Tensor(v, requires_grad=True) for v in (x, w, b, m))
    out = matmul(linear(tx, tw, tb), tm)       # (2, 5, 6) @ (2, 6, 3)
    G = rand(rng, *out.shape)
    out.backward(G)
    px, pw, pb, pm = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in (x, w, b, m))
    pout = torch.nn.functional.linear(px, pw, pb) @ pm
    pout.backward(torch.tensor(G.astype(np.float64)))
    np.testing.assert_allclose(out.data, pout.detach().numpy(), rtol=1e-5, atol=1e-5)
    for mine, theirs in ((tx, px), (tw, pw), (tb, pb), (tm, pm)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("kernel", ["auto", "avx2", "portable"])
def test_b_packed_one_k_block_at_a_time_gives_the_bits_of_b_packed_whole(rng, threads, ta, tb, kernel):
    """With few rows (M <= 1024) and a large packed B (> 2 MB), B is packed one
    KC-block (256) at a time just before the row tasks use it, k-blocks outer;
    with more rows all of K is packed first, row tasks outer. Every C element is
    the same k-ordered chain either way: the first 40 rows of a 1100-row product
    (whole-B path) must be the bits of the 40-row product (block path), for 1 and
    2 threads, and close to the float64 reference."""
    if kernel != "auto":
        try:
            _C.gemm_kernel(kernel)
        except ValueError:
            pytest.skip(f"this CPU or build has no {kernel} GEMM kernel")
    M, N, K, big = 40, 1024, 700, 1100  # packed B 700 x 1024 floats: 2.9 MB, three k-blocks
    a_big = rand(rng, *((K, big) if ta else (big, K)))
    a = np.ascontiguousarray(a_big[:, :M] if ta else a_big[:M])
    b = rand(rng, *((N, K) if tb else (K, N)))
    try:
        got = {t: threads(t, _C.gemm, a, b, trans_a=ta, trans_b=tb) for t in (1, 2)}
        whole = {t: threads(t, _C.gemm, a_big, b, trans_a=ta, trans_b=tb)[:M] for t in (1, 2)}
    finally:
        _C.gemm_kernel("auto")
    close(got[1], ref.gemm(a, b, ta, tb), K)
    for t in (1, 2):
        np.testing.assert_array_equal(got[t].view(np.uint32), whole[1].view(np.uint32), err_msg=f"{t} threads")
        np.testing.assert_array_equal(whole[t].view(np.uint32), whole[1].view(np.uint32), err_msg=f"{t} threads")


@pytest.mark.parametrize("M,N,K", [(150, 64, 300), (37, 192, 1024), (300, 100, 70), (13, 200, 257), (260, 64, 1024),
                                   (300, 300, 800), (40, 1024, 300)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_operands_read_in_place_give_the_packed_bits(rng, threads, M, N, K, ta, tb):
    """The AVX-512 kernel reads full panels in place instead of packing them: a
    transposed A, a row-major A when C is narrow (N <= 192), a row-major B when
    M <= 256 or K*N <= 64K, unless B's rows are a multiple of 4 KB apart. The AVX2
    kernel packs every panel. Each element is the same k-ordered FMA chain either
    way, so the results must be the same bits, for 1 and 2 threads, with partial
    panels and K > KC (256); (300, 300, 800) keeps B packed, and so does
    (40, 1024, 300) with a row-major B (rows 4 KB apart)."""
    try:
        _C.gemm_kernel("avx512")
    except ValueError:
        pytest.skip("this CPU or build has no avx512 GEMM kernel")
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    try:
        got = {}
        for kernel in ("avx512", "avx2"):
            _C.gemm_kernel(kernel)
            for t in (1, 2):
                got[kernel, t] = threads(t, _C.gemm, a, b, trans_a=ta, trans_b=tb)
        _C.gemm_kernel("avx2")
        # every panel packed: A row-major, B transposed
        want = _C.gemm(np.ascontiguousarray(a.T) if ta else a, b if tb else np.ascontiguousarray(b.T), trans_b=True)
    finally:
        _C.gemm_kernel("auto")
    close(want, ref.gemm(a, b, ta, tb), K)
    for key, c in got.items():
        np.testing.assert_array_equal(c.view(np.uint32), want.view(np.uint32), err_msg=str(key))

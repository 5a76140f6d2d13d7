"""The autograd tape and the view ops (relpos/tensor.py, relpos/_fn/views.py)."""
import numpy as np
import pytest
from reference import numgrad

import relpos
from relpos.tensor import Function, Tensor, _unbroadcast


def test_tensor_wraps_float32_without_copy():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = Tensor(a)
    assert t.numpy() is a
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and t.dtype == np.float32


def test_tensor_converts_other_dtypes_and_rejects_complex():
    assert Tensor(np.arange(3)).dtype == np.float32
    assert Tensor([1.5, 2.5]).dtype == np.float32
    with pytest.raises(TypeError, match="float32"):
        Tensor(np.array([1 + 2j]))
    with pytest.raises(TypeError, match="float32"):
        Tensor(np.array(["a"]))


def test_tensor_factory_copies():
    a = np.ones(3, dtype=np.float32)
    t = relpos.tensor(a)
    t.data[0] = 5
    assert a[0] == 1


def test_backward_requires_grad_and_scalar():
    t = Tensor(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        t.backward()
    t = Tensor(np.ones(3), requires_grad=True)
    y = t.reshape(3, 1)
    with pytest.raises(RuntimeError, match="non-scalar"):
        y.backward()
    with pytest.raises(ValueError, match="grad must have shape"):
        y.backward(np.ones(3))


def test_no_grad_records_nothing():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with relpos.no_grad():
        y = x.reshape(4)
    assert not y.requires_grad and y.is_leaf
    assert relpos.is_grad_enabled()


class Square(Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        Square.calls += 1
        (x,) = ctx.saved
        return 2 * x * g


def test_diamond_graph_accumulates_and_visits_each_node_once():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = Square.apply(x)              # y = x^2
    a = y[0:2]                       # two uses of y
    b = y[1:3]
    Square.calls = 0
    relpos.functional.concat([a, b]).sum().backward()
    # d/dx of (x0^2 + x1^2) + (x1^2 + x2^2) = [2x0, 4x1, 2x2]
    np.testing.assert_allclose(x.grad, [2.0, 8.0, 6.0])
    assert Square.calls == 1


def test_leaf_gradients_accumulate_until_zeroed():
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    Square.apply(x).sum().backward()
    Square.apply(x).sum().backward()
    np.testing.assert_allclose(x.grad, [4.0, -8.0])
    x.zero_grad()
    assert x.grad is None


def test_backward_shape_mismatch_is_reported():
    class Bad(Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy()

        @staticmethod
        def backward(ctx, g):
            return g[:1]

    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="Bad.backward returned a gradient of shape"):
        Bad.apply(x).sum().backward()


VIEW_OPS = {
    "reshape": lambda x, F: F.reshape(x, (2, 6)) if F else x.reshape(2, 6),
    "transpose": lambda x, F: F.transpose(x) if F else x.T,
    # a repeated fancy index: the gradients of repeated rows must add
    "getitem": lambda x, F: F.getitem(x, ([0, 2, 0], slice(1, 3))) if F else x[[0, 2, 0], 1:3],
    "sum_axis": lambda x, F: F.sum(x, axis=0) if F else x.sum(axis=0),
    "mean": lambda x, F: F.mean(x, axis=1, keepdims=True) if F else x.mean(axis=1, keepdims=True),
    "concat": lambda x, F: F.concat([x, F.getitem(x, slice(None, None, -1))], axis=0) if F
    else np.concatenate([x, x[::-1]], axis=0),
}


@pytest.mark.parametrize("op", sorted(VIEW_OPS))
def test_view_ops_match_numpy_and_finite_differences(op, rng):
    fn = VIEW_OPS[op]
    x0 = rng.standard_normal((3, 4))
    y_np = fn(x0, None)
    w = rng.standard_normal(y_np.shape)  # a random projection makes the loss sensitive to every entry

    x = Tensor(x0, requires_grad=True)
    y = fn(x, relpos.functional)
    np.testing.assert_allclose(y.data, y_np, rtol=1e-6)
    y.backward(w)
    np.testing.assert_allclose(x.grad, numgrad(lambda z: float((fn(z, None) * w).sum()), x0), rtol=1e-5, atol=1e-6)


def test_unbroadcast_sums_expanded_axes():
    g = np.ones((4, 2, 3), dtype=np.float32)
    assert _unbroadcast(g, (3,)).tolist() == [8.0, 8.0, 8.0]
    assert _unbroadcast(g, (2, 1)).tolist() == [[12.0], [12.0]]
    assert _unbroadcast(g, (4, 2, 3)) is g


def test_scalar_on_the_left_of_every_operator():
    x = Tensor(np.array([1.0, 2.0, 4.0]), requires_grad=True)
    y = (2 / x) + (1 - x) * 3 + x ** 2
    np.testing.assert_allclose(y.data, 2 / x.data + (1 - x.data) * 3 + x.data ** 2, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, -2 / x.data ** 2 - 3 + 2 * x.data, rtol=1e-5)
    with pytest.raises(TypeError, match="only \\*\\* 2"):
        x ** 3


def test_tensor_module_imports_only_at_top_level():
    """tensor.py imports functional once, at the bottom (the tolerated tensor <-> functional
    pair), not inside each operator method."""
    import ast
    import inspect
    import sys

    tensor_mod = sys.modules["relpos.tensor"]  # relpos.tensor is also the name of the factory function
    tree = ast.parse(inspect.getsource(tensor_mod))
    nested = [node.lineno for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert nested == []
    assert tensor_mod.F is relpos.functional

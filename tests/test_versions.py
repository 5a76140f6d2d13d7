"""Version counters and the in-place check (issue 12, item 7).

Every Tensor carries ``_version``, bumped by each in-place operation relpos
offers; backward refuses a graph whose saved inputs (or outputs) changed in
place since the forward, as PyTorch does, instead of giving wrong gradients.

    python -m pytest tests/test_versions.py -q
"""
import numpy as np
import pytest

import relpos
import relpos.functional as F
import relpos.nn as nn
from relpos.optim import SGD, AdamW


def leaf(shape, seed=0, grad=True):
    return relpos.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=grad)


# ------------------------------------------------------------ the counter
@pytest.mark.parametrize("op", [
    lambda t: t.add_(1.0),
    lambda t: t.add_(np.ones(4)),            # broadcast over the leading axis
    lambda t: t.mul_(2.0),
    lambda t: t.mul_(relpos.tensor(np.full((3, 4), 3.0))),
    lambda t: t.zero_(),
    lambda t: t.copy_(np.arange(12.0).reshape(3, 4)),
])
def test_each_in_place_op_bumps_the_version_once(op):
    t = leaf((3, 4), grad=False)
    before = t.numpy().copy()
    assert t._version == 0
    assert op(t) is t                        # in-place ops return the tensor itself
    assert t._version == 1
    assert not np.array_equal(t.numpy(), before)   # it did write
    op(t)
    assert t._version == 2


def test_in_place_values_match_numpy():
    base = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    t = relpos.tensor(base)
    t.add_(np.arange(4, dtype=np.float32)).mul_(0.5)
    np.testing.assert_array_equal(t.numpy(), (base + np.arange(4, dtype=np.float32)) * np.float32(0.5))
    t.copy_(7.0)
    assert (t.numpy() == 7).all()
    t.zero_()
    assert (t.numpy() == 0).all() and t.dtype == np.float32


def test_assigning_data_bumps_the_version():
    t = leaf((2,), grad=False)
    t.data = np.zeros(2, np.float32)
    assert t._version == 1
    assert t.numpy().tolist() == [0.0, 0.0]


def test_in_place_ops_check_their_operand():
    t = leaf((3, 4), grad=False)
    with pytest.raises(ValueError, match=r"add_: the operand of shape \(5,\) does not broadcast to .*\(3, 4\)"):
        t.add_(np.ones(5))
    with pytest.raises(ValueError, match=r"copy_: the operand of shape \(3, 4, 1\)"):
        t.copy_(np.ones((3, 4, 1)))
    with pytest.raises(TypeError, match="other must be real numbers"):
        t.mul_(np.ones((3, 4), complex))
    assert t._version == 0                   # nothing was written


def test_detach_and_views_share_the_counter_with_their_base():
    x = leaf((3, 4), grad=False)
    d = x.detach()
    d.add_(1.0)
    assert x._version == 1 and d._version == 1
    v = x.reshape(12)                        # a NumPy view of x's array
    assert np.shares_memory(v.numpy(), x.numpy())
    v.mul_(2.0)
    assert x._version == 2
    w = x.transpose()[1:]                    # a view of a view: same owner
    w.zero_()
    assert x._version == 3 and v._version == 3
    c = x * 1.0                              # a new array: its own counter
    c.add_(1.0)
    assert x._version == 3 and c._version == 1


def test_in_place_on_a_tensor_that_requires_grad_needs_no_grad():
    w = leaf((3,))
    for name, op in (("add_", lambda: w.add_(1.0)), ("mul_", lambda: w.mul_(2.0)),
                     ("zero_", lambda: w.zero_()), ("copy_", lambda: w.copy_(1.0))):
        with pytest.raises(RuntimeError, match=rf"{name} on a tensor that requires grad \(shape \(3,\)\).*no_grad"):
            op()
    assert w._version == 0
    with relpos.no_grad():
        w.add_(1.0)                          # the usual hand-written update
    assert w._version == 1


# ------------------------------------------------------------ the check
def test_input_changed_in_place_between_forward_and_backward_raises():
    w = leaf((4, 3))
    x = leaf((2, 4), seed=1, grad=False)
    loss = (x @ w).sum()
    x.add_(1.0)                              # x is saved by matmul: its gradient for w would be wrong
    with pytest.raises(RuntimeError, match=r"MatMul.*backward.*input of shape \(2, 4\).*modified by an "
                                           r"in-place operation.*version 1; expected version 0"):
        loss.backward()
    assert w.grad is None                    # nothing half-accumulated


def test_change_through_a_view_of_a_saved_input_is_caught():
    w = leaf((3, 4))
    x = leaf((3, 4), seed=1, grad=False)
    loss = (x * w).sum()
    x.reshape(12)[:4].zero_()
    with pytest.raises(RuntimeError, match=r"input of shape \(3, 4\)"):
        loss.backward()


def test_change_through_detach_is_caught():
    w = leaf((3, 4))
    y = F.exp(w)                              # exp saves its output
    loss = y.sum()
    y.detach().mul_(2.0)
    # the first node backward meets that saw y (Sum, which read it) names it
    with pytest.raises(RuntimeError, match=r"Sum\.backward.*input of shape \(3, 4\).*in-place"):
        loss.backward()
    with pytest.raises(RuntimeError, match=r"_Exp\.backward.*output of shape \(3, 4\)"):
        y.backward(np.ones((3, 4)))           # from y itself, exp's own record is checked


def test_saved_output_changed_under_no_grad_is_caught():
    w = leaf((5,))
    y = F.exp(w)
    with relpos.no_grad():
        y.add_(1.0)
    with pytest.raises(RuntimeError, match=r"_Exp\.backward.*output of shape \(5,\).*version 1; expected version 0"):
        y.sum().backward()                    # the new Sum node saw version 1: fine; exp's record is stale


def test_assigning_data_of_a_saved_input_is_caught():
    w = leaf((2, 2))
    x = leaf((2, 2), seed=1, grad=False)
    loss = (x * w).sum()
    x.data = np.zeros((2, 2), np.float32)
    with pytest.raises(RuntimeError, match="in-place"):
        loss.backward()


def test_optimizer_step_invalidates_graphs_recorded_before_it():
    lin = nn.Linear(3, 2, seed=0)
    x = relpos.tensor(np.ones((4, 3)))
    for opt in (SGD(lin.parameters(), lr=0.1), AdamW(lin.parameters(), lr=0.1)):
        lin(x).sum().backward()
        stale = lin(x).sum()                  # recorded with the weights before the step
        v = lin.weight._version
        opt.step()
        assert lin.weight._version == v + 1 and lin.bias._version == v + 1
        with pytest.raises(RuntimeError, match=r"in-place operation.*version"):
            stale.backward()
        opt.zero_grad()
        lin(x).sum().backward()               # a fresh graph after the step is fine
        opt.zero_grad()


def test_load_state_dict_bumps_parameters():
    lin = nn.Linear(3, 2, seed=0)
    stale = lin(relpos.tensor(np.ones((1, 3)))).sum()
    lin.load_state_dict(nn.Linear(3, 2, seed=1).state_dict())
    assert lin.weight._version == 1 and lin.bias._version == 1
    with pytest.raises(RuntimeError, match="in-place"):
        stale.backward()


def test_no_false_alarm():
    w = leaf((3, 4))
    x = relpos.tensor(np.random.default_rng(1).integers(-4, 5, (3, 4)))  # exact sums below
    other = leaf((3, 4), seed=2, grad=False)
    loss = (x * w).sum()
    other.add_(1.0)                           # not in this graph
    loss.backward()
    np.testing.assert_array_equal(w.grad, x.numpy())
    loss.backward()                           # a second pass over the same graph
    np.testing.assert_array_equal(w.grad, 2 * x.numpy())
    x.add_(1.0)                               # after backward: allowed
    (x * w).sum().backward()                  # and a new graph sees the new values
    np.testing.assert_array_equal(w.grad, 3 * x.numpy() - 2)


def test_writes_through_the_ndarray_bypass_the_counter():
    """Documented, as for ``.data`` in PyTorch: ``t.data[...] = ...`` and NumPy views of the
    array are not seen by the counter (so a training loop may clamp or initialise freely)."""
    w = leaf((3,))
    x = leaf((3,), seed=1, grad=False)
    loss = (x * w).sum()
    x.data[...] = 2.0
    np.add(x.numpy(), 1.0, out=x.numpy())
    assert x._version == 0
    loss.backward()                           # unchecked: the gradient uses the new values
    np.testing.assert_array_equal(w.grad, np.full(3, 3.0, np.float32))


def test_a_custom_function_is_checked_too():
    class Cube(relpos.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved
            return 3 * x * x * g

    w = leaf((2, 3))
    loss = Cube.apply(w).sum()
    with relpos.no_grad():
        w.mul_(2.0)
    with pytest.raises(RuntimeError, match=r"Cube\.backward.*input of shape \(2, 3\)"):
        loss.backward()

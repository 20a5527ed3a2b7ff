"""Hessian-vector products: every backend against the dense float64 reference, exact weighting
of uneven batches, the measured "auto" choice and its fallbacks."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable

import lossvista as lv
from conftest import classification_data
from lossvista.curvature import HessianOperator, HessianWarning, hvp, hvp_choice
from lossvista.curvature.hvp import _CHOICES
from lossvista.errors import DirectionError, InputError

from .test_dense import reference_hessian, tanh_mlp

F = nn.functional
BACKENDS = ("double_backward", "forward_over_reverse", "finite_difference")


def flat(d) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


def random_vector(model, names, seed=1):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.randn(params[n].shape, generator=g, dtype=params[n].dtype) for n in names}


@pytest.mark.parametrize("params", [None, ["0.weight", "2.bias"]])
def test_backends_agree_with_the_dense_hessian_on_uneven_batches(params):
    model = tanh_mlp()
    X, y = classification_data(n=45)
    batches = [(X[:20], y[:20]), (X[20:27], y[20:27]), (X[27:], y[27:])]
    obj = lv.Objective(model, F.cross_entropy, batches, params=params)
    v = random_vector(model, obj.param_names)
    expected = reference_hessian(model, F.cross_entropy, X, y, obj.param_names) @ flat(v)
    for method in BACKENDS:
        product = hvp(obj, v, method=method)
        assert list(product) == list(obj.param_names)
        assert product.meta == {"kind": "hvp", "backend": method}
        rtol = 1e-8 if method == "finite_difference" else 1e-12
        torch.testing.assert_close(flat(product), expected, rtol=rtol, atol=rtol)


def test_operator_reuses_graphs_within_the_budget_and_recomputes_the_rest():
    model = tanh_mlp()
    X, y = classification_data(n=45)
    batches = [(X[:20], y[:20]), (X[20:27], y[20:27]), (X[27:], y[27:])]
    obj = lv.Objective(model, F.cross_entropy, batches)
    v = flat(random_vector(model, obj.param_names))
    expected = reference_hessian(model, F.cross_entropy, X, y) @ v
    with HessianOperator(obj, method="double_backward") as whole:
        assert whole.kept_batches == 3 and whole.graph_bytes > 0
        budget = whole.graph_bytes // 2  # room for some batches only
        for _ in range(3):  # the kept graphs serve repeated products
            torch.testing.assert_close(whole.matvec(v), expected, rtol=1e-12, atol=1e-12)
        assert whole.n_hvp == 3
    with HessianOperator(obj, method="double_backward", max_graph_bytes=budget) as part:
        assert 0 < part.kept_batches < 3
        torch.testing.assert_close(part.matvec(v), expected, rtol=1e-12, atol=1e-12)


def test_a_missing_name_counts_as_zero_and_bad_vectors_are_refused():
    model = tanh_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=20))
    full = random_vector(model, obj.param_names)
    partial = {"0.weight": full["0.weight"]}
    padded = {n: (t if n == "0.weight" else torch.zeros_like(t)) for n, t in full.items()}
    torch.testing.assert_close(flat(hvp(obj, partial)), flat(hvp(obj, padded)))
    with pytest.raises(DirectionError, match="does not select"):
        hvp(obj, {"nope": torch.zeros(3)})
    with pytest.raises(DirectionError, match="shape"):
        hvp(obj, {"0.weight": torch.zeros(2, 2)})
    with pytest.raises(InputError, match="backend"):
        hvp(obj, full, method="magic")


def test_unused_parameters_and_a_loss_linear_in_theta_give_zero_curvature():
    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, dtype=torch.float64))
            self.unused = nn.Parameter(torch.randn(2, dtype=torch.float64))

        def forward(self, x):
            return x @ self.w

    model = Linear()
    X = torch.randn(7, 3, dtype=torch.float64)
    obj = lv.Objective(model, lambda out, t: out.mean(), (X, torch.zeros(7)))
    v = {"w": torch.ones(3, dtype=torch.float64), "unused": torch.ones(2, dtype=torch.float64)}
    for method in BACKENDS:
        assert float(flat(hvp(obj, v, method=method)).abs().max()) == 0.0


# -- models whose kernels lack second derivatives -------------------------------------------------
class _NoSecond(torch.autograd.Function):
    """Identity whose backward raises: a gradient that cannot be differentiated again."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("derivative for no_second is not implemented")

    @staticmethod
    def jvp(ctx, t):
        return t


class TanhNoDoubleBackward(torch.autograd.Function):
    """tanh with a first derivative in both modes but no double backward."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return _NoSecond.apply(g * (1 - y * y))

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors
        return t * (1 - y * y)


class TanhReverseOnly(TanhNoDoubleBackward):
    """No forward-mode derivative either: only finite differences work."""

    jvp = torch.autograd.Function.jvp


class TanhOnceDifferentiable(torch.autograd.Function):
    """``@once_differentiable``: double backward through ``autograd.grad`` silently drops the
    second-derivative term of tanh instead of raising."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class CustomTanhMLP(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.reference = tanh_mlp(width=6)
        self.function = function

    def forward(self, x):
        first, _, last = self.reference
        return last(self.function.apply(first(x)))


@pytest.mark.parametrize(
    ("function", "expected", "warns"),
    [
        (TanhNoDoubleBackward, "forward_over_reverse", False),
        (TanhReverseOnly, "finite_difference", True),
        (TanhOnceDifferentiable, "finite_difference", True),
    ],
)
def test_auto_falls_back_when_second_derivatives_are_missing_or_wrong(function, expected, warns):
    model = CustomTanhMLP(function)
    X, y = classification_data(n=30)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    v = random_vector(model, obj.param_names)
    truth = reference_hessian(model.reference, F.cross_entropy, X, y) @ flat(
        {n.removeprefix("reference."): t for n, t in v.items()}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        product = hvp(obj, v)
    assert product.meta["backend"] == expected
    assert hvp_choice(obj).fastest == expected
    assert any(issubclass(w.category, HessianWarning) for w in caught) == warns
    torch.testing.assert_close(flat(product), truth, rtol=1e-7, atol=1e-8)


def test_auto_measures_once_per_objective_and_forgets_it_with_the_objective():
    model = tanh_mlp()
    obj = lv.Objective(model, F.cross_entropy, classification_data(n=20))
    choice = hvp_choice(obj)
    assert set(choice.working) == {"double_backward", "forward_over_reverse"}
    assert choice.fastest in choice.working and choice.seconds[choice.fastest] > 0
    assert hvp_choice(obj) is choice  # cached
    with HessianOperator(obj) as op:  # "auto" keeps the gradient graph when it works
        assert op.method == "double_backward" and op.kept_batches == 1
    assert hvp(obj, random_vector(model, obj.param_names)).meta["backend"] == choice.fastest
    assert obj in _CHOICES
    alive = weakref.ref(obj)
    del obj, op
    gc.collect()
    assert alive() is None  # the cache does not keep the objective (or its data) alive


def test_an_error_of_the_loss_itself_is_raised_not_taken_for_a_missing_derivative():
    model = tanh_mlp()

    def broken(output, target):
        raise ValueError("my loss is broken")

    obj = lv.Objective(model, broken, classification_data(n=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error", HessianWarning)  # no "falling back" warning first
        with pytest.raises(ValueError, match="my loss is broken"):
            hvp(obj, random_vector(model, obj.param_names))


class ReluNoForwardMode(torch.autograd.Function):
    """A correct, twice-differentiable ReLU without functorch support (no forward-over-reverse)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0).to(g.dtype)


class CustomReluMLP(nn.Module):
    def __init__(self, relu):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 5)
        self.relu = relu

    def forward(self, x):
        return self.c(self.relu(self.b(self.relu(self.a(x)))))


def test_double_backward_is_kept_when_finite_differences_cannot_referee_a_relu_net():
    """Across ReLU kinks finite differences change with their step; they must not overrule a
    correct double backward (float32, 2000 samples: the step crosses many kinks)."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(2000, 20, generator=g), torch.randint(0, 5, (2000,), generator=g)
    custom = lv.Objective(CustomReluMLP(ReluNoForwardMode.apply), F.cross_entropy, (X, y))
    plain = lv.Objective(CustomReluMLP(torch.relu), F.cross_entropy, (X, y))
    with pytest.warns(HessianWarning, match="could not be checked"):
        choice = hvp_choice(custom)
    assert choice.fastest == "double_backward"
    v = random_vector(custom.model, custom.param_names)
    got = flat(hvp(custom, v))
    expected = flat(hvp(plain, v, method="forward_over_reverse"))
    assert float((got - expected).norm() / expected.norm()) < 1e-4

"""Bad input is stopped before any work is spent (issue 8): every fault is injected as a user
would make it, and each test asserts the clear error (type, and a message naming the input and the
remedy), that the caller's model is unchanged, and that no work was done (no surface file, no grid
evaluation of the loss)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_mlp, snapshot
from lossvista._functional import functional

F = nn.functional


class Counting:
    """A loss (or metric) that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0
        self.__name__ = getattr(fn, "__name__", "counted")

    def __call__(self, output, target):
        self.calls += 1
        return self.fn(output, target)


def sum_cross_entropy(output, target):
    return F.cross_entropy(output, target, reduction="sum")


def _refused(verb, error, match, store):
    """``verb(store)`` raises ``error`` matching ``match`` and leaves no surface file behind."""
    with pytest.raises(error, match=match) as caught:
        verb(store)
    assert not store.exists(), "the surface file was created before the refusal"
    return caught.value


# -- a loss that is not a batch mean ----------------------------------------------------------------
def test_a_sum_loss_is_refused_on_the_first_batch_before_the_grid(tmp_path):
    X, y = classification_data(n=300)
    model = make_mlp()
    before = snapshot(model)
    loss = Counting(sum_cross_entropy)
    obj = lv.Objective(model, loss, (X, y))
    dirs = lv.random_directions(model, 2)
    error = _refused(
        lambda store: lv.plane(obj, dirs, steps=(30, 30), store=store, progress=False),
        lv.InputError,
        r'loss_fn is not a mean over the samples.*like a sum.*reduction="mean"',
        tmp_path / "plane.h5",
    )
    assert "300 samples" in str(error)
    assert loss.calls == 3  # the whole first batch and its two halves: not even the centre
    assert_unchanged(model, before)


@pytest.mark.parametrize("path", ["line", "functional"])
def test_every_evaluation_path_checks_the_loss_once(path, tmp_path):
    X, y = classification_data(n=40)
    model = make_mlp()
    before = snapshot(model)
    obj = lv.Objective(model, Counting(sum_cross_entropy), (X, y), batch_size=16)
    (d,) = lv.random_directions(model, 1)
    with pytest.raises(lv.InputError, match='reduction="mean"'):
        if path == "line":
            lv.line(obj, d, steps=5, store=tmp_path / "line.h5", progress=False)
        else:
            with functional(obj) as view:
                view.loss_and_grad(view.params())
    assert not (tmp_path / "line.h5").exists()
    assert_unchanged(model, before)


def test_a_metric_that_is_a_sum_is_refused_by_name(tmp_path):
    X, y = classification_data(n=50)
    model = make_mlp()
    before = snapshot(model)

    def correct(output, target):
        return (output.argmax(1) == target).double().sum()

    obj = lv.Objective(model, F.cross_entropy, (X, y), metrics=[correct])
    (d,) = lv.random_directions(model, 1)
    _refused(
        lambda store: lv.line(obj, d, steps=5, store=store, progress=False),
        lv.InputError,
        "metric 'correct' is not a mean",
        tmp_path / "line.h5",
    )
    assert_unchanged(model, before)


def test_the_batch_mean_check_runs_once_and_accepts_float32_rounding_and_single_samples():
    X, y = classification_data(n=3000, dtype=torch.float32, seed=3)
    model = make_mlp(dtype=torch.float32)
    loss = Counting(F.cross_entropy)
    obj = lv.Objective(model, loss, (X, y))
    first = obj.loss()
    assert loss.calls == 3 + 6  # the check (once), then 6 batches of 512
    assert obj.loss() == first and loss.calls == 3 + 12
    # A constant added to a mean is still a mean; so is a mean over several output dimensions.
    with_constant = lv.Objective(model, lambda o, t: F.cross_entropy(o, t) + 5.0, (X, y))
    assert with_constant.loss() == pytest.approx(first + 5.0, rel=1e-5)
    assert lv.Objective(model, lambda o, t: (o**2).mean(), (X, y)).loss() > 0
    # A batch of one item cannot be split: the check is skipped (a sum is then also a mean).
    single = lv.Objective(model, sum_cross_entropy, (X[:1], y[:1]))
    with torch.no_grad():
        expected = float(F.cross_entropy(model(X[:1]), y[:1]))
    assert single.loss() == pytest.approx(expected, rel=1e-6)


# -- NaN / inf in directions and end-point models ---------------------------------------------------
def _with_nan(tensors, name, value=float("nan")):
    out = {n: t.detach().clone() for n, t in tensors.items()}
    out[name].view(-1)[3] = value
    return out


def test_non_finite_directions_and_end_points_are_refused_before_any_evaluation(tmp_path):
    X, y = classification_data(n=30)
    model = make_mlp()
    before = snapshot(model)
    loss = Counting(F.cross_entropy)
    obj = lv.Objective(model, loss, (X, y))
    d1, d2 = lv.random_directions(model, 2)
    params = dict(model.named_parameters())
    other, third = make_mlp(seed=1), make_mlp(seed=2)
    cases = [
        (
            lambda s: lv.line(obj, _with_nan(d1, "2.weight"), store=s, progress=False),
            r"direction has NaN or infinite entries in \['2\.weight \(1 of 256 entries\)'\]",
        ),
        (
            lambda s: lv.plane(obj, (d1, _with_nan(d2, "0.bias", math.inf)), store=s),
            r"directions\[1\] has NaN or infinite entries in \['0\.bias",
        ),
        (
            lambda s: lv.interpolate(obj, model, _with_nan(params, "4.weight"), store=s),
            r"model_b has NaN or infinite entries in \['4\.weight",
        ),
        (
            lambda s: lv.plane_through(obj, model, other, _with_nan(params, "0.weight"), store=s),
            r"m2 has NaN or infinite entries in \['0\.weight",
        ),
    ]
    for index, (verb, match) in enumerate(cases):
        _refused(verb, lv.DirectionError, match, tmp_path / f"{index}.h5")
    with pytest.raises(lv.DirectionError, match=r"second model \(b\) has NaN.*'2\.bias"):
        lv.direction_between(third, _with_nan(dict(third.named_parameters()), "2.bias"))
    assert loss.calls == 0
    assert_unchanged(model, before)


# -- degenerate planes ----------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 2.0, -0.5])
def test_parallel_directions_are_refused_with_their_cosine(scale, tmp_path):
    X, y = classification_data(n=30)
    model = make_mlp()
    before = snapshot(model)
    loss = Counting(F.cross_entropy)
    obj = lv.Objective(model, loss, (X, y))
    (d,) = lv.random_directions(model, 1)
    cosine = "1.000000000" if scale > 0 else "-1.000000000"
    _refused(
        lambda s: lv.plane(obj, (d, d * scale), store=s, progress=False),
        lv.DirectionError,
        rf"parallel \(cosine {cosine}\)",
        tmp_path / "plane.h5",
    )
    assert loss.calls == 0
    assert_unchanged(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collinear_models_are_refused_with_the_relative_distance_also_in_float32(dtype, tmp_path):
    X, y = classification_data(n=30, dtype=dtype)
    m0, m1 = make_mlp(seed=0, dtype=dtype), make_mlp(seed=1, dtype=dtype)
    before = snapshot(m0)
    loss = Counting(F.cross_entropy)
    obj = lv.Objective(m0, loss, (X, y))
    p0, p1 = dict(m0.named_parameters()), dict(m1.named_parameters())
    with torch.no_grad():  # on the line, up to the rounding of the dtype (or 1e-9 off it)
        m2 = {n: p0[n] + 0.37 * (p1[n] - p0[n]) for n in p0}
        if dtype == torch.float64:
            m2 = {n: t + 1e-9 * torch.randn_like(t) for n, t in m2.items()}
    reason = "rounding noise" if dtype == torch.float32 else "at most 1e-06 of that distance"
    error = _refused(
        lambda s: lv.plane_through(obj, m0, m1, m2, store=s, progress=False),
        lv.DirectionError,
        rf"collinear.*m2 lies .* from the line through m0 and m1, .* times their distance .*{reason}",
        tmp_path / "through.h5",
    )
    assert "interpolate" in str(error)
    assert loss.calls == 0
    assert_unchanged(m0, before)


# -- type errors and spans --------------------------------------------------------------------------
def test_wrong_types_and_huge_spans_are_refused_naming_the_input(tmp_path):
    X, y = classification_data(n=30)
    model = make_mlp()
    before = snapshot(model)
    loss = Counting(F.cross_entropy)
    obj = lv.Objective(model, loss, (X, y))
    d1, d2 = lv.random_directions(model, 2)
    cases = [
        (lambda s: lv.line(obj, d1, span="12", store=s), lv.InputError, "the string '12'"),
        (lambda s: lv.plane(obj, (d1, d2), span="12", store=s), lv.InputError, "string '12'"),
        (lambda s: lv.plane(obj, (d1, d2), steps="21", store=s), lv.InputError, "string '21'"),
        (lambda s: lv.line(obj, d1, span=(True, 2), store=s), lv.InputError, "pair .* numbers"),
        (
            lambda s: lv.line(obj, [1.0, 2.0], store=s),
            lv.DirectionError,
            "direction must be a Direction or a mapping .* got list of 2 items",
        ),
        (
            lambda s: lv.line(obj, torch.ones(3), store=s),
            lv.DirectionError,
            "got tensor of shape .*no parameter names",
        ),
        (
            lambda s: lv.line(obj, make_mlp(seed=1), store=s),
            lv.DirectionError,
            "got Sequential.*direction_between",
        ),
        (
            lambda s: lv.plane(obj, (d1, [0.0]), store=s),
            lv.DirectionError,
            r"directions\[1\] must be a Direction",
        ),
        (
            lambda s: lv.line(obj, d1, span=(-1e300, 1e300), store=s),
            lv.InputError,
            r"span \(-1e\+300, 1e\+300\) reaches beyond ±1e\+06",
        ),
    ]
    for index, (verb, error, match) in enumerate(cases):
        _refused(verb, error, match, tmp_path / f"{index}.h5")
    assert loss.calls == 0
    assert_unchanged(model, before)


def test_a_span_that_overflows_half_precision_is_refused(tmp_path):
    model = make_mlp(dtype=torch.float16)
    before = snapshot(model)
    X, y = classification_data(n=10, dtype=torch.float16)
    obj = lv.Objective(model, Counting(F.cross_entropy), (X, y))
    (d,) = lv.random_directions(model, 1, norm=None)
    _refused(
        lambda s: lv.line(obj, d, span=(-1e5, 1e5), store=s, progress=False),
        lv.InputError,
        r"beyond what torch\.float16 holds",
        tmp_path / "line.h5",
    )
    assert obj.loss_fn.calls == 0
    assert_unchanged(model, before)


# -- raw errors of the model or the loss, translated ----------------------------------------------
@pytest.mark.parametrize(
    ("fault", "cause", "match"),
    [
        ("labels", IndexError, r"loss_fn failed on batch 0: .*labels from 0 to 3 .* 3 classes"),
        ("x_dtype", RuntimeError, r"the model failed on batch 0: inputs float32 \(30, 8\).*X\.to"),
        ("x_shape", RuntimeError, r"the model failed on batch 0: inputs float64 \(30, 5\)"),
        ("y_dtype", RuntimeError, r"loss_fn failed on batch 0: .*target float64 \(30,\)"),
        ("tuple", TypeError, r"model output \(float64 \(30, 3\), .*out\.logits"),
    ],
)
def test_a_failing_model_or_loss_names_the_batch_shapes_and_remedy(fault, cause, match, tmp_path):
    X, y = classification_data(n=30)
    y[7] = 3
    model = make_mlp()
    net: nn.Module = model
    if fault != "labels":
        y = y.clamp_max(2)
    if fault == "x_dtype":
        X = X.float()
    elif fault == "x_shape":
        X = X[:, :5]
    elif fault == "y_dtype":
        y = y.double()
    elif fault == "tuple":

        class WithFeatures(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = model

            def forward(self, x):
                return self.net(x), x

        net = WithFeatures()
    before = snapshot(net)
    obj = lv.Objective(net, F.cross_entropy, (X, y))
    (d,) = lv.random_directions(net, 1)
    error = _refused(
        lambda s: lv.line(obj, d, steps=5, store=s, progress=False),
        lv.DataError,
        match,
        tmp_path / "line.h5",
    )
    assert isinstance(error, cause) and isinstance(error.__cause__, cause)
    assert_unchanged(net, before)


def test_a_failure_in_a_later_batch_names_that_batch():
    X, y = classification_data(n=60)
    y = y.clamp_max(2)
    y[45] = 7
    model = make_mlp()
    before = snapshot(model)
    with pytest.raises(lv.DataError, match=r"batch 2: .*labels from 0 to 7"):
        lv.Objective(model, F.cross_entropy, (X, y), batch_size=20).loss()
    assert_unchanged(model, before)


def test_bn_recompute_with_a_batch_of_one_sample_is_refused_before_the_grid(tmp_path):
    X, y = classification_data(n=65)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    before = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, (X, y), bn="recompute", batch_size=64)
    (d,) = lv.random_directions(model, 1)
    _refused(
        lambda s: lv.line(obj, d, steps=5, store=s, progress=False),
        lv.DataError,
        r"batch 1: inputs float64 \(1, 8\).*single sample.*batch_size=65",
        tmp_path / "line.h5",
    )
    assert_unchanged(model, before)


def test_unknown_and_meta_devices_are_refused():
    X, y = classification_data(n=10)
    model = make_mlp()
    if torch.cuda.device_count() < 8:
        with pytest.raises(lv.InputError, match=r"device='cuda:7' is not available"):
            lv.Objective(model, F.cross_entropy, (X, y), device="cuda:7")
    with pytest.raises(lv.InputError, match="device='meta' holds no values"):
        lv.Objective(model, F.cross_entropy, (X, y), device="meta")
    with pytest.raises(lv.InputError, match="device='gpu' is not a device torch knows"):
        lv.Objective(model, F.cross_entropy, (X, y), device="gpu")
    with pytest.raises(lv.InputError, match=r"on the meta device .*to_empty"):
        lv.Objective(make_mlp().to("meta"), F.cross_entropy, (X, y))


def test_numpy_pairs_are_accepted_and_missing_targets_refused():
    X, y = classification_data(n=30)
    model = make_mlp()
    before = snapshot(model)
    expected = lv.Objective(model, F.cross_entropy, (X, y)).loss()
    assert lv.Objective(model, F.cross_entropy, (X.numpy(), y.numpy())).loss() == expected
    batches = [(X[:16].numpy(), y[:16].numpy()), (X[16:].numpy(), y[16:].numpy())]
    assert lv.Objective(model, F.cross_entropy, batches).loss() == pytest.approx(expected, 1e-12)
    with pytest.raises(lv.DataError, match=r"the target y is None.*torch.zeros"):
        lv.Objective(model, F.cross_entropy, (X, None))
    with pytest.raises(lv.DataError, match="the target y is None"):
        lv.Objective(model, F.cross_entropy, [(X, None)]).loss()
    with pytest.raises(lv.DataError, match=r"y list of 30 int.*torch\.as_tensor"):
        lv.Objective(model, F.cross_entropy, (X, y.tolist()))
    assert_unchanged(model, before)


def test_a_metric_returning_a_vector_is_refused(tmp_path):
    X, y = classification_data(n=30)
    model = make_mlp()
    before = snapshot(model)

    def hits(output, target):
        return (output.argmax(1) == target).double()

    obj = lv.Objective(model, F.cross_entropy, (X, y), metrics=[hits])
    (d,) = lv.random_directions(model, 1)
    _refused(
        lambda s: lv.line(obj, d, steps=5, store=s, progress=False),
        lv.InputError,
        r"metric 'hits' returned \(30,\), expected a scalar mean",
        tmp_path / "line.h5",
    )
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "is empty"),
        ("train/acc", "contains '/'"),
        ("acc_stderr", "ends in '_stderr'"),
        ("loss", "reserved for the loss"),
        ("computed", "reserved: the surface file uses"),
        ("x", "reserved: the surface file uses"),
        ("directions", "reserved: the surface file uses"),
        (3, "must be strings"),
    ],
)
def test_metric_names_the_surface_file_cannot_hold_are_refused_in_the_constructor(name, match):
    X, y = classification_data(n=10)
    model = make_mlp()
    before = snapshot(model)
    metric = Counting(lv.objective.accuracy)
    with pytest.raises(lv.InputError, match=match):
        lv.Objective(model, F.cross_entropy, (X, y), metrics={name: metric})
    assert metric.calls == 0
    assert_unchanged(model, before)


def test_direction_load_of_a_file_that_is_not_a_direction_says_what_it_holds(tmp_path):
    model = make_mlp()
    contents = {
        "tensor.pt": (torch.ones(4), r"holds a tensor of shape \(4,\)"),
        "list.pt": ([torch.ones(2), torch.ones(2)], "holds a list of 2 items"),
        "empty.pt": ({}, "holds an empty mapping"),
        "checkpoint.pt": (
            {"epoch": 3, "model": model.state_dict()},
            r"'epoch' \(int\).*training checkpoint.*\['model'\]",
        ),
        "model.pt": (model, "weights_only loading refuses .*pickled model"),
    }
    for name, (payload, match) in contents.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(lv.DirectionError, match=rf"direction file '.*{name}' .*{match}"):
            lv.Direction.load(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a torch file")
    with pytest.raises(lv.DirectionError, match=r"notes\.txt' cannot be read"):
        lv.Direction.load(tmp_path / "notes.txt")
    with pytest.raises(lv.DirectionError, match="does not exist"):
        lv.Direction.load(tmp_path / "missing.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a plain state dict still loads
    assert torch.equal(lv.Direction.load(tmp_path / "plain.pt")["0.weight"], model[0].weight)

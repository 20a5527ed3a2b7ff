"""lv.LandscapeProbe: its results equal the verbs called directly (and the closed forms of a
quadratic), the schedule, the model and the random state left bit for bit as they were (also
when a measurement raises), the cost stated once, the sinks, and refusals before any work."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossvista as lv
import lossvista.probe as probe_module
from conftest import quadratic_problem
from lossvista.errors import InputError
from lossvista.probe import ProbeResults

from ._events import as_stored, events, scalar_series


@pytest.fixture
def quadratic():
    model, quad, data = quadratic_problem(n=6, seed=0)
    return model, quad, lv.Objective(model, quad, data)


def test_results_equal_the_verbs_and_the_closed_forms(quadratic):
    model, quad, obj = quadratic
    probe = lv.LandscapeProbe(obj, every=1, plane=dict(steps=5), progress=False)
    results = probe.run(0)
    directions = lv.random_directions(obj, 2, seed=0)
    assert results.plane == lv.plane(obj, directions, steps=5, strategy="loop", progress=False)
    assert results.eigen == lv.hessian_eigs(obj, k=1, tol=1e-3, max_iter=100)
    assert results.sharpness == lv.sharpness(obj, kind="average", rho=0.01, samples=16)
    assert results.plane.center["loss"] == pytest.approx(quad.exact(model.theta.detach()), 1e-12)
    assert results.lambda_max == pytest.approx(4.0, rel=1e-9)  # the top eigenvalue of A
    assert results.parts() == (results.plane, results.eigen, results.sharpness)
    assert set(results.seconds) == {"plane", "curvature", "sharpness", "total"}
    assert results.seconds["total"] >= sum(v for k, v in results.seconds.items() if k != "total")


def test_parts_can_be_switched_off_and_options_reach_the_verbs(quadratic):
    _, _, obj = quadratic
    probe = lv.LandscapeProbe(
        obj,
        every=1,
        plane=None,
        curvature=dict(k=2, which="both", tol=1e-8),
        sharpness=dict(kind="hessian", rho=0.1),
        progress=False,
    )
    results = probe.run(4)
    assert results.plane is None and results.step == 4
    assert results.eigen.largest == pytest.approx([4.0, 3.3], rel=1e-7)  # linspace(0.5, 4, 6)
    assert results.eigen.smallest == pytest.approx([0.5, 1.2], rel=1e-7)
    assert results.sharpness.kind == "hessian"
    assert results.sharpness.value == pytest.approx(0.5 * 0.1**2 * 4.0, rel=1e-9)
    only_plane = lv.LandscapeProbe(obj, every=1, curvature=False, sharpness=False, progress=False)
    r = only_plane.run(0)
    assert r.eigen is None and r.sharpness is None and r.lambda_max is None
    assert r.parts() == (r.plane,)
    assert r.plane.shape == (11, 11)


def test_schedule_every_and_at(quadratic):
    _, _, obj = quadratic
    built, logged = [], []

    def factory():
        built.append(True)
        return obj

    probe = lv.LandscapeProbe(
        factory,
        every=3,
        at=[4],
        plane=dict(steps=3),
        curvature=None,
        sharpness=None,
        sinks=lambda step, results: logged.append((step, results.step)),
        progress=False,
    )
    returned = {step: probe.maybe_run(step) for step in range(10)}
    assert [s for s, r in returned.items() if r is not None] == [0, 3, 4, 6, 9]
    assert all(isinstance(r, ProbeResults) for r in returned.values() if r is not None)
    assert logged == [(s, s) for s in (0, 3, 4, 6, 9)]
    assert len(built) == 5 and probe.runs_ == 5
    only_at = lv.LandscapeProbe(obj, at=(2, 5), progress=False)
    assert [s for s in range(8) if only_at.scheduled(s)] == [2, 5]


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3)
        )

    def forward(self, x):
        return self.body(x)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def state(model: nn.Module) -> dict:
    """Everything the probe promises to leave as it was."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for name, value in before["state"].items():
        assert torch.equal(value, after["state"][name]), name
    for key in ("training", "requires_grad", "grad_ids"):
        assert before[key] == after[key], key
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(before["rng"], after["rng"])


def trained_model():
    torch.manual_seed(0)
    model = DropoutNet()
    X, y = data()
    F.cross_entropy(model(X), y).backward()  # a training step in progress: .grad is set
    model.body[0].bias.requires_grad_(False)
    model.body[4].bias.grad = None
    return model, X, y


def test_model_and_random_state_are_restored_bit_for_bit():
    model, X, y = trained_model()
    assert model.training
    before = state(model)
    probe = lv.LandscapeProbe(
        lambda: lv.Objective(model, F.cross_entropy, (X, y)),
        every=1,
        plane=dict(steps=3),
        sharpness=dict(kind="worst", rho=0.05, ascent_steps=2, restarts=1),
        progress=False,
    )
    with torch.no_grad():  # curvature needs gradients: the probe enables them
        results = probe.run(0)
    assert results.lambda_max is not None
    assert_same(before, state(model))


def test_restored_when_a_measurement_raises(monkeypatch):
    model, X, y = trained_model()
    before = state(model)

    def vandal(obj, **kwargs):  # changes everything the probe guards, then fails
        with torch.no_grad():
            for p in obj.model.parameters():
                p.add_(1.0)
                p.requires_grad_(True)
                p.grad = torch.ones_like(p)
            for b in obj.model.buffers():
                b.add_(1)
        obj.model.eval()
        torch.rand(5)
        raise RuntimeError("the measurement failed")

    monkeypatch.setattr(probe_module, "sharpness", vandal)
    probe = lv.LandscapeProbe(
        lambda: lv.Objective(model, F.cross_entropy, (X, y)), every=1, plane=dict(steps=3)
    )
    with pytest.raises(RuntimeError, match="the measurement failed"):
        probe.run(0)
    assert_same(before, state(model))


def train(probe_every: int | None) -> dict:
    """Six SGD steps of a dropout net on shuffled batches (global RNG), probed or not."""
    torch.manual_seed(0)
    model = DropoutNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = data()
    probe = None
    if probe_every is not None:
        probe = lv.LandscapeProbe(
            lambda: lv.Objective(model, F.cross_entropy, (X[:8], y[:8])),
            every=probe_every,
            plane=dict(steps=3),
            sharpness=dict(samples=2),
            progress=False,
        )
    for step in range(6):
        batch = torch.randperm(32)[:8]
        optimizer.zero_grad()
        F.cross_entropy(model(X[batch]), y[batch]).backward()
        optimizer.step()
        if probe is not None:
            probe.maybe_run(step)
    return model.state_dict()


def test_training_with_a_probe_equals_training_without():
    probed, plain = train(probe_every=2), train(probe_every=None)
    for name, value in plain.items():
        assert torch.equal(value, probed[name]), name


def test_cost_is_stated_once(quadratic, capsys):
    _, _, obj = quadratic
    probe = lv.LandscapeProbe(obj, every=1, plane=dict(steps=(3, 4)))
    probe.run(0)
    first = capsys.readouterr()
    lines = first.err.strip().splitlines()
    assert len(lines) == 2 and first.out == ""
    assert "a 3 x 4 plane (14 loss evaluations)" in lines[0]
    assert "at most 101 Hessian-vector products" in lines[0]
    assert "average sharpness (33 loss evaluations)" in lines[0]
    assert "6 parameters and 10 samples" in lines[0]
    assert lines[1].startswith("lossvista probe: the first run took ")
    probe.run(1)
    assert capsys.readouterr().err == ""
    lv.LandscapeProbe(obj, every=1, progress=False).run(0)
    assert capsys.readouterr().err == ""


class MetricsLogger:
    """What a Lightning logger offers besides TensorBoard: log_metrics(metrics, step)."""

    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def test_sinks_writer_folder_logger_and_callable(quadratic, tmp_path):
    _, _, obj = quadratic
    logger, calls = MetricsLogger(), []
    probe = lv.LandscapeProbe(
        obj,
        every=5,
        plane=dict(steps=3),
        sinks=[tmp_path / "tb", logger, lambda step, results: calls.append(step)],
        progress=False,
    )
    results = probe.maybe_run(10)
    expected = lv.log_to_tensorboard.__globals__["scalars"](results)
    assert set(expected) == {
        "lossvista/center_loss",
        "lossvista/lambda_max",
        "lossvista/sharpness",
        "lossvista/sharpness_stderr",
    }
    assert logger.logged == [(10, expected)] and calls == [10]
    acc = events(tmp_path / "tb")
    for tag, value in expected.items():
        assert scalar_series(acc, tag) == [(10, as_stored(value))]
    assert acc.Tags()["images"] == ["lossvista/landscape"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(every=0), "every must be a positive integer"),
        (dict(every=True), "every must be a positive integer"),
        (dict(), "needs a schedule"),
        (dict(at="5"), "at must be a list of steps"),
        (dict(at=[-1]), "a step in at must be an integer >= 0"),
        (dict(every=1, plane=dict(stepz=3)), r"plane has unknown options \['stepz'\]"),
        (dict(every=1, plane=dict(steps=1)), "steps must be an integer >= 2"),
        (dict(every=1, plane=dict(span=(1, 1))), "span"),
        (dict(every=1, plane=dict(strategy="fast")), "strategy"),
        (dict(every=1, plane="yes"), "plane must be None, False, True or a dict"),
        (dict(every=1, curvature=dict(k=0)), "curvature k must be a positive integer"),
        (dict(every=1, curvature=dict(which="top")), "curvature which"),
        (dict(every=1, curvature=dict(tol=-1.0)), "curvature tol must be a positive"),
        (dict(every=1, curvature=dict(max_basis=0)), "curvature max_basis must be a positive"),
        (dict(every=1, sharpness=dict(kind="worst")), "needs its radius"),
        (dict(every=1, sharpness=dict(kind="nope")), "sharpness kind must be one of"),
        (dict(every=1, sharpness=dict(radius=1)), "sharpness has unknown options"),
        (dict(every=1, plane=None, curvature=False, sharpness=None), "nothing to measure"),
        (dict(every=1, sinks=3), "a sink must be"),
        (dict(every=1, progress="yes"), "progress must be True or False"),
    ],
)
def test_bad_arguments_are_refused_at_construction(quadratic, kwargs, message):
    _, _, obj = quadratic
    with pytest.raises(InputError, match=message):
        lv.LandscapeProbe(obj, **kwargs)


def test_bad_objectives_are_refused_before_any_work(quadratic, monkeypatch):
    _, _, obj = quadratic
    with pytest.raises(InputError, match=r"objective must be an lv\.Objective or a zero-argument"):
        lv.LandscapeProbe(3, every=1)

    def no_work(*args, **kwargs):
        raise AssertionError("work was spent before the arguments were checked")

    monkeypatch.setattr(probe_module, "plane_verb", no_work)
    monkeypatch.setattr(probe_module, "hessian_eigs", no_work)
    calls = []
    sink = lambda step, results: calls.append(step)  # noqa: E731
    with pytest.raises(InputError, match=r"returned a int, not an lv\.Objective"):
        lv.LandscapeProbe(lambda: 3, every=1, sinks=sink).run(0)
    with pytest.raises(InputError, match="7 eigenpairs of a Hessian of size 6"):
        lv.LandscapeProbe(obj, every=1, curvature=dict(k=7), sinks=sink).run(0)
    monkeypatch.setattr(probe_module, "sharpness", no_work)
    for options, message in [
        (dict(samples=1), "samples must be an integer >= 2"),
        (dict(kind="worst", rho=0.1, norm="l3"), "norm must be 'l2', 'linf' or None"),
        (dict(kind="average", rho=0.1, norm="l2"), "norm= does not apply"),
        (dict(kind="worst", rho=0.1, ascent_steps=0), "ascent_steps must be a positive integer"),
        (dict(rho=-1.0), "rho must be a positive finite number"),
    ]:
        with pytest.raises(InputError, match=message):
            lv.LandscapeProbe(obj, every=1, sharpness=options, sinks=sink).run(0)
    with pytest.raises(InputError, match="step must be an integer >= 0"):
        lv.LandscapeProbe(obj, every=1, sinks=sink).maybe_run(-2)
    assert calls == []


def test_a_probe_on_one_rank_of_a_job_never_waits_for_the_others(quadratic, monkeypatch):
    # Under torchrun a training loop often probes on rank 0 only: the probe must measure in its
    # own process instead of starting a process group that would wait for the other ranks.
    import lossvista._dist.team as team

    def wait_for_the_others(*args, **kwargs):
        raise RuntimeError("started a process group: rank 0 would wait for rank 1")

    monkeypatch.setattr(team, "_start_group", wait_for_the_others)
    for name, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0").items():
        monkeypatch.setenv(name, value)
    _, _, obj = quadratic
    with pytest.raises(RuntimeError, match="would wait"):  # the trap is armed outside the probe
        lv.plane(obj, lv.random_directions(obj, 2, seed=0), steps=3, progress=False)
    results = lv.LandscapeProbe(obj, every=1, plane=dict(steps=3), progress=False).run(0)
    assert results.lambda_max == pytest.approx(4.0, rel=1e-9)

"""Directions: filter normalisation (Li et al. 2018) invariants, orthogonality, persistence."""

from __future__ import annotations

import math

import pytest
import torch

import lossvista as lv
from conftest import make_cnn, make_mlp


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def test_filter_norms_equal_weight_filter_norms():
    model = make_cnn()
    (d,) = lv.random_directions(model, 1, norm="filter", seed=3)
    weights = dict(model.named_parameters())
    for name, w in weights.items():
        if w.dim() >= 2:
            torch.testing.assert_close(_filter_norms(d[name]), _filter_norms(w.detach()))
        else:
            assert torch.count_nonzero(d[name]) == 0, f"{name} should be ignored"


def test_scaling_a_weight_filter_scales_its_direction_filter():
    model = make_mlp()
    scaled = make_mlp()
    with torch.no_grad():
        scaled[0].weight[2] *= 7.5
    (d,) = lv.random_directions(model, 1, seed=11)
    (ds,) = lv.random_directions(scaled, 1, seed=11)
    torch.testing.assert_close(ds["0.weight"][2], 7.5 * d["0.weight"][2])
    rows = [i for i in range(d["0.weight"].shape[0]) if i != 2]
    torch.testing.assert_close(ds["0.weight"][rows], d["0.weight"][rows])
    torch.testing.assert_close(ds["2.weight"], d["2.weight"])


def test_ignored_parameters_get_zero_direction_and_bn_found_by_module_type():
    model = make_cnn()
    (d,) = lv.random_directions(model, 1, ignore=("bias", "bn"))
    zero = {n for n, t in d.items() if torch.count_nonzero(t) == 0}
    assert zero == {"0.bias", "1.weight", "1.bias", "3.bias", "4.weight", "4.bias", "7.bias"}
    (only_bias,) = lv.random_directions(model, 1, ignore="bias")
    assert torch.count_nonzero(only_bias["1.weight"]) > 0  # BN scale is not a bias
    (glob,) = lv.random_directions(model, 1, ignore=("7.*",))
    assert torch.count_nonzero(glob["7.weight"]) == 0 and torch.count_nonzero(glob["0.weight"]) > 0


def test_one_dimensional_parameters_not_ignored_get_the_weight_vector_norm():
    model = make_cnn()
    (d,) = lv.random_directions(model, 1, norm="filter", ignore=())
    for name, w in model.named_parameters():
        if w.dim() == 1:
            assert math.isclose(float(d[name].norm()), float(w.detach().norm()), rel_tol=1e-12)


@pytest.mark.parametrize("norm", ["filter", "layer", "model", None])
def test_orthogonal_after_normalisation(norm):
    model = make_cnn()
    d1, d2, d3 = lv.random_directions(model, 3, norm=norm, orthogonalize=True, seed=5)
    for a, b in ((d1, d2), (d1, d3), (d2, d3)):
        assert abs(a.dot(b)) < 1e-10 * a.norm() * b.norm()
    if norm == "filter":
        for name, w in model.named_parameters():
            if w.dim() >= 2:
                torch.testing.assert_close(_filter_norms(d2[name]), _filter_norms(w.detach()))
                torch.testing.assert_close(_filter_norms(d3[name]), _filter_norms(w.detach()))


def test_layer_and_model_normalisation():
    model = make_mlp()
    (layer,) = lv.random_directions(model, 1, norm="layer", ignore=())
    for name, w in model.named_parameters():
        assert math.isclose(float(layer[name].norm()), float(w.detach().norm()), rel_tol=1e-12)
    (whole,) = lv.random_directions(model, 1, norm="model", ignore=())
    total = math.sqrt(sum(float(w.detach().norm()) ** 2 for w in model.parameters()))
    assert math.isclose(whole.norm(), total, rel_tol=1e-12)


def test_seeded_and_independent_of_device_and_repeatable():
    model = make_mlp()
    a = lv.random_directions(model, 2, seed=1)
    b = lv.random_directions(model, 2, seed=1)
    c = lv.random_directions(model, 2, seed=2)
    assert a[0].fingerprint() == b[0].fingerprint()
    assert a[0].fingerprint() != c[0].fingerprint()
    assert a[0].fingerprint() != a[1].fingerprint()
    assert a[0].meta["seed"] == 1 and a[0].meta["norm"] == "filter"


def test_directions_over_an_objective_cover_only_its_parameters(mlp_problem):
    model, loss, data = mlp_problem
    obj = lv.Objective(model, loss, data, params="2.*")
    (d,) = lv.random_directions(obj, 1)
    assert set(d) == {"2.weight", "2.bias"}


def test_save_load_and_reuse_on_another_instance(tmp_path):
    model = make_mlp(seed=0)
    (d,) = lv.random_directions(model, 1, seed=4)
    path = d.save(tmp_path / "d.pt")
    loaded = lv.Direction.load(path)
    assert loaded.meta == d.meta
    assert all(torch.equal(loaded[n], d[n]) for n in d)
    other = make_mlp(seed=9)  # same names and shapes, other values
    X = torch.randn(5, 8, dtype=torch.float64)
    obj = lv.Objective(other, torch.nn.functional.cross_entropy, (X, torch.zeros(5).long()))
    line = lv.line(obj, loaded, steps=3, progress=False)
    assert line.values["loss"].shape == (3,)


def test_direction_between_models_and_state_dicts():
    a, b = make_cnn(seed=0), make_cnn(seed=1)
    d = lv.direction_between(a, b)
    assert set(d) == {n for n, _ in a.named_parameters()}
    torch.testing.assert_close(d["0.weight"], b[0].weight.detach() - a[0].weight.detach())
    from_dicts = lv.direction_between(a.state_dict(), b.state_dict())
    assert set(from_dicts) == set(d)  # BatchNorm buffers are not parameters
    assert from_dicts.fingerprint() == d.fingerprint()


def test_direction_between_mismatch_names_the_keys():
    a, b = make_mlp(), make_cnn()
    with pytest.raises(lv.DirectionError, match="only in first model"):
        lv.direction_between(a, b)
    bigger = make_mlp(width=32)
    with pytest.raises(lv.DirectionError, match=r"0\.weight: \(16, 8\) vs \(32, 8\)"):
        lv.direction_between(make_mlp(), bigger)


def test_bad_arguments():
    model = make_mlp()
    with pytest.raises(lv.InputError, match="norm must be"):
        lv.random_directions(model, 1, norm="filters")
    with pytest.raises(lv.InputError, match="positive integer"):
        lv.random_directions(model, 0)
    with pytest.raises(lv.DirectionError, match="leaves no parameter"):
        lv.random_directions(model, 1, ignore=("*",))
    zero = make_mlp()
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    with pytest.raises(lv.DirectionError, match="zero direction"):
        lv.random_directions(zero, 1)


def test_direction_arithmetic():
    model = make_mlp()
    d1, d2 = lv.random_directions(model, 2, norm=None, ignore=())
    total = d1 + d2
    assert math.isclose(total.dot(total), d1.dot(d1) + 2 * d1.dot(d2) + d2.dot(d2), rel_tol=1e-12)
    assert math.isclose((2 * d1).norm(), 2 * d1.norm(), rel_tol=1e-12)
    assert math.isclose((d1 - d1).norm(), 0.0, abs_tol=0.0)


def test_bool_count_of_directions_is_refused():
    with pytest.raises(lv.InputError, match="n must be a positive integer, got True"):
        lv.random_directions(torch.nn.Linear(3, 2), True)

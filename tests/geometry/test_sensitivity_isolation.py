"""layer_sensitivity measures one group at a time without touching the caller's model or
objective, and under bn="perturb" a group's slice moves only the group's own statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, snapshot
from lossvista.directions import random_directions
from lossvista.geometry.sensitivity import layer_sensitivity


def _bn_problem(bn: str) -> lv.Objective:
    """Two BatchNorm layers with non-trivial statistics; the model is left in train mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Linear(4, 4),
        nn.BatchNorm1d(4),
        nn.Tanh(),
        nn.Linear(4, 2),
    ).double()
    with torch.no_grad():
        for norm in (model[1], model[4]):
            norm.bias.normal_()  # non-zero, so that filter normalisation gives them a direction
        model(torch.randn(40, 3, dtype=torch.float64) * 2 + 1)  # train mode: stats move
    x = torch.randn(30, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (30,))
    return lv.Objective(model, nn.functional.cross_entropy, (x, y), bn=bn)


@pytest.mark.parametrize("bn", ["eval", "recompute", "perturb"])
def test_every_kind_leaves_the_model_and_the_objective_alone(bn):
    obj = _bn_problem(bn)
    before = snapshot(obj.model)
    loss = obj.loss()  # the first evaluation marks the data as checked
    attributes = dict(vars(obj))
    selection = (obj.param_names, list(obj.param_selection or []), obj.buffer_names)
    layer_sensitivity(obj, kind="curvature", n_probes=4, max_iter=50)
    layer_sensitivity(obj, kind="sharpness", rho=0.05, samples=4)
    layer_sensitivity(obj, kind="slice", span=(-0.2, 0.2), steps=3, strategy="loop")
    assert_unchanged(obj.model, before)  # parameters, buffers, modes, momentum, bit for bit
    assert obj.model.training  # still in the train mode the caller left it in
    assert vars(obj).keys() == attributes.keys()
    assert all(vars(obj)[k] is v for k, v in attributes.items())
    assert (obj.param_names, list(obj.param_selection or []), obj.buffer_names) == selection
    assert type(obj) is lv.Objective
    assert obj.loss() == loss


def test_perturb_slice_moves_only_the_groups_own_statistics():
    """Oracle: the loss at origin + t d with only the group's tensors (and its own BatchNorm's
    statistics) moved, evaluated point by point through ``Objective.evaluate(at=)``."""
    obj = _bn_problem("perturb")
    groups = {"last": "6.*", "norm": "1.*"}
    result = layer_sensitivity(obj, kind="slice", groups=groups, span=(-0.5, 0.5), steps=5)
    origin = {**obj.parameters(), **obj.perturbed_buffers()}
    origin = {n: t.clone() for n, t in origin.items()}
    for group, own in (("last", ["6.weight", "6.bias"]), ("norm", ["1.weight", "1.bias"])):
        # the same seeded draw for a whole-model perturb objective restricted to the group:
        # its entries for the group's tensors are the ones the group's slice must use
        alone = lv.Objective(obj.model, obj.loss_fn, obj._data._tensors, params=own, bn="perturb")
        (direction,) = random_directions(alone, 1, seed=0, norm="filter", ignore=())
        moved = [n for n in direction if n in own or n.startswith(own[0].split(".")[0] + ".")]
        assert ("4.running_mean" in direction) and "4.running_mean" not in moved
        expected = [
            obj.evaluate(at={n: origin[n] + t * direction[n] for n in moved})["loss"]
            for t in np.linspace(-0.5, 0.5, 5)
        ]
        np.testing.assert_allclose(result.slices[group]["loss"], expected, rtol=1e-12)
    # the group of a Linear moves no statistics at all: its slice is finite everywhere
    assert np.isfinite(result.slices["last"]["loss"]).all()

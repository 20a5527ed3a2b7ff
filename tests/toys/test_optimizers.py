"""Optimizers on toy functions: torch.optim and the textbook rules agree step for step (float64,
1e-10), and both agree with closed forms of gradient descent and heavy-ball momentum on a
quadratic."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from lossvista.errors import InputError
from lossvista.toys import default_hyperparameters, get, optimizer_names, run

# Every named optimizer with its defaults and with the options that change its update rule.
SETTINGS = [
    ("gd", {}),
    ("gd", {"weight_decay": 0.1}),
    ("sgd", {"noise": 0.5}),
    ("momentum", {}),
    ("momentum", {"dampening": 0.2, "weight_decay": 0.01, "momentum": 0.8}),
    ("nesterov", {"weight_decay": 0.01}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.01, "alpha": 0.9}),
    ("adagrad", {}),
    ("adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.01}),
    ("adam", {}),
    ("adam", {"amsgrad": True, "weight_decay": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adamw", {}),
    ("adamw", {"amsgrad": True, "weight_decay": 0.1}),
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_every_named_optimizer_is_covered():
    assert {name for name, _ in SETTINGS} == set(optimizer_names())


@pytest.mark.parametrize("function", ["himmelblau", "sincos_bowl"])
@pytest.mark.parametrize(("optimizer", "settings"), SETTINGS)
def test_torch_optim_equals_the_textbook_rule_step_for_step(function, optimizer, settings):
    paths = [
        run(function, optimizer, steps=150, seed=3, implementation=kind, **settings)
        for kind in ("torch", "textbook")
    ]
    assert paths[0].points.shape == (151, 2)
    assert np.abs(paths[0].points[1:] - paths[0].points[:-1]).max() > 1e-3  # it moved
    np.testing.assert_allclose(paths[0].points, paths[1].points, rtol=0, atol=1e-10)
    assert paths[0].hyperparameters == paths[1].hyperparameters


@pytest.mark.parametrize("implementation", ["torch", "textbook"])
def test_gradient_descent_on_a_quadratic_is_the_matrix_power(implementation):
    fn = get("quadratic", condition=8.0, angle=0.4)
    hessian = fn.hessian([0.0, 0.0]).numpy()
    lr, start = 0.1, np.array([-1.5, 1.0])
    path = run(fn, "gd", start=start, steps=40, lr=lr, implementation=implementation)
    step = np.eye(2) - lr * hessian
    expected = np.array([np.linalg.matrix_power(step, k) @ start for k in range(41)])
    np.testing.assert_allclose(path.points, expected, atol=1e-13)


@pytest.mark.parametrize("implementation", ["torch", "textbook"])
def test_momentum_follows_pytorchs_buffer_convention_on_a_quadratic(implementation):
    # b_{k+1} = mu b_k + H x_k (b_0 = 0), x_{k+1} = x_k - lr b_{k+1}: a linear map of (x, b).
    fn = get("quadratic", condition=5.0, angle=0.3)
    H = fn.hessian([0.0, 0.0]).numpy()
    lr, mu, start = 0.05, 0.9, np.array([1.0, -1.2])
    path = run(fn, "momentum", start=start, steps=60, lr=lr, momentum=mu, implementation=implementation)  # fmt: skip
    eye = np.eye(2)
    M = np.block([[eye - lr * H, -lr * mu * eye], [H, mu * eye]])
    state = np.concatenate([start, np.zeros(2)])
    expected = [start]
    for _ in range(60):
        state = M @ state
        expected.append(state[:2])
    np.testing.assert_allclose(path.points, np.array(expected), atol=1e-12)


def test_adams_first_step_moves_lr_against_the_gradients_sign():
    fn = get("himmelblau")
    start = np.array([0.5, -0.5])
    g = fn.grad(start).numpy()
    eps, lr = 1e-8, 0.1
    path = run(fn, "adam", start=start, steps=1, lr=lr, eps=eps)
    # m_hat = g and v_hat = g^2 after bias correction: x1 = x0 - lr g / (|g| + eps).
    np.testing.assert_allclose(path.points[1], start - lr * g / (np.abs(g) + eps), atol=1e-15)


def test_adamw_decays_the_weights_outside_the_adaptive_step():
    # f = (x^2 + y^2) / 2 from (1, 0): the gradient is (1, 0), taken before the decay.
    fn, start, lr, wd, eps = get("quadratic", condition=1.0), np.array([1.0, 0.0]), 0.01, 0.5, 1e-8
    adamw = run(fn, "adamw", start=start, steps=1, lr=lr, weight_decay=wd)
    assert adamw.points[1, 0] == pytest.approx((1 - lr * wd) - lr * 1 / (1 + eps), abs=1e-15)
    # Adam's weight decay is an L2 term inside the gradient, normalised away by the step.
    adam = run(fn, "adam", start=start, steps=1, lr=lr, weight_decay=wd)
    assert adam.points[1, 0] == pytest.approx(1 - lr * 1.5 / (1.5 + eps), abs=1e-15)


def test_gradient_noise_is_seeded():
    first = run("sincos_bowl", "sgd", steps=50, seed=1)
    again = run("sincos_bowl", "sgd", steps=50, seed=1)
    other = run("sincos_bowl", "sgd", steps=50, seed=2)
    plain = run("sincos_bowl", "sgd", steps=50, seed=1, noise=0.0)
    gd = run("sincos_bowl", "gd", steps=50)
    np.testing.assert_array_equal(first.points, again.points)
    assert np.abs(first.points - other.points).max() > 1e-3
    np.testing.assert_array_equal(plain.points, gd.points)
    assert first.hyperparameters["noise"] == 1.0 and "noise" not in plain.hyperparameters


def test_float32_path_stays_close_to_float64():
    wide = run("himmelblau", "adam", steps=100)
    narrow = run("himmelblau", "adam", steps=100, dtype=torch.float32)
    narrow_textbook = run("himmelblau", "adam", steps=100, dtype=torch.float32, implementation="textbook")  # fmt: skip
    np.testing.assert_allclose(narrow.points, wide.points, atol=1e-4)
    np.testing.assert_allclose(narrow_textbook.points, narrow.points, atol=1e-4)


def test_any_torch_optimizer_class_runs_closures_included():
    lbfgs = run("rosenbrock", torch.optim.LBFGS, steps=20, lr=1.0, line_search_fn="strong_wolfe")
    assert lbfgs.name == "lbfgs" and lbfgs.reached_minimum() == 0
    assert lbfgs.converged_step(1e-8) is not None
    adamax = run("himmelblau", torch.optim.Adamax, steps=30, lr=0.1)
    assert adamax.points.shape == (31, 2) and adamax.values[-1] < adamax.values[0]


def test_path_records_start_values_and_convergence():
    fn = get("quadratic")
    path = run(fn, "gd", start=(1.0, 1.0), steps=200)
    assert path.points[0].tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(path.values, fn.evaluate(path.points))
    k = path.converged_step(1e-8)
    assert k is not None and path.values[k] <= 1e-8 < path.values[k - 1]
    assert path.converged_step(1e-8, target=-1.0) is None
    assert path.reached_minimum() == 0 and path.steps == 200
    assert path.wall_time > 0
    assert "gd" in repr(path) and "quadratic" in repr(path)


def test_a_path_without_minima_never_converges():
    path = run("saddle", "gd", steps=100)
    assert path.converged_step() is None and path.reached_minimum() is None
    assert path.final_value < -1  # it slid off the saddle along y


def test_local_minimum_reached_is_named():
    # From its default start gradient descent on the bowl stops in a local minimum.
    fn = get("sincos_bowl")
    path = run(fn, "gd", steps=300)
    index = path.reached_minimum()
    assert index is not None and index != 0
    assert path.final_value == pytest.approx(fn.minimum_values[index], abs=1e-9)
    assert path.converged_step() is None  # the global value is never reached


def test_default_hyperparameters_scale_with_the_function():
    rosenbrock = default_hyperparameters("rosenbrock", "momentum")
    assert rosenbrock == {"lr": get("rosenbrock").lr, "momentum": 0.9}
    assert default_hyperparameters("himmelblau", "adam") == {"lr": pytest.approx(0.1)}
    assert default_hyperparameters("himmelblau", "adagrad") == {"lr": pytest.approx(1.0)}
    assert default_hyperparameters("sincos_bowl", "sgd")["noise"] == 1.0
    assert default_hyperparameters("beale", "adamw")["weight_decay"] == 0.01
    path = run("rosenbrock", "nesterov", steps=3, lr=1e-4)
    assert path.hyperparameters == {"lr": 1e-4, "momentum": 0.9, "nesterov": True}


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match="unknown optimizer 'adan'"):
        run("beale", "adan")
    with pytest.raises(InputError, match="adam: cannot use hyper-parameters"):
        run("beale", "adam", momentum=0.9)
    with pytest.raises(InputError, match="adam: cannot use hyper-parameters"):
        run("beale", "adam", momentum=0.9, implementation="textbook")
    for implementation in ("torch", "textbook"):
        for optimizer, settings in [("gd", {"lr": -1.0}), ("gd", {"nesterov": True}),
                                    ("adam", {"betas": (0.9, 1.5)}), ("rmsprop", {"alpha": -1}),
                                    ("adagrad", {"lr_decay": -1})]:  # fmt: skip
            with pytest.raises(InputError, match=f"{optimizer}: cannot use hyper-parameters"):
                run("beale", optimizer, implementation=implementation, **settings)
    with pytest.raises(InputError, match="no textbook rule"):
        run("beale", torch.optim.Adamax, implementation="textbook")
    with pytest.raises(InputError, match="steps must be"):
        run("beale", "gd", steps=-1)
    with pytest.raises(InputError, match="start must be two finite numbers"):
        run("beale", "gd", start=(1.0, float("nan")))
    with pytest.raises(InputError, match="implementation must be"):
        run("beale", "gd", implementation="numpy")
    with pytest.raises(InputError, match="noise must be"):
        run("beale", "sgd", noise=-1.0)


def test_plot_draws_one_path_over_the_functions_bounds():
    path = run("himmelblau", "momentum", steps=50)
    figure = path.plot()
    ax = figure.axes[0]
    assert len(ax.lines) == 1
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), path.points)
    assert ax.get_xlim() == (-5.0, 5.0) and ax.get_ylim() == (-5.0, 5.0)
    _, given = plt.subplots()
    assert path.plot(ax=given) is given.figure

"""The toy functions: values against independent numpy formulas, and every listed minimum and
saddle proved by its gradient and Hessian; a grid-plus-Newton search proves none is missing."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from lossvista.errors import InputError
from lossvista.toys import ToyFunction, get, names
from lossvista.toys._critical import critical_points

# Independent numpy definitions (the oracle for the torch expressions).
REFERENCE = {
    "quadratic": lambda x, y: 0.5 * (x**2 + 10 * y**2),
    "sincos_bowl": lambda x, y: np.sin(4 * x) * np.cos(4 * y) + 2 * (x**2 + y**2),
    "rosenbrock": lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
    "himmelblau": lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2,
    "rastrigin": lambda x, y: (
        20 + x**2 - 10 * np.cos(2 * np.pi * x) + y**2 - 10 * np.cos(2 * np.pi * y)
    ),
    "beale": lambda x, y: (
        (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2
    ),
    "six_hump_camel": lambda x, y: (
        (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2
    ),
    "saddle": lambda x, y: x**2 - y**2,
    "monkey_saddle": lambda x, y: x**3 - 3 * x * y**2,
}
EXPECTED_MINIMA = {
    "quadratic": 1,
    "sincos_bowl": 4,
    "rosenbrock": 1,
    "himmelblau": 4,
    "rastrigin": 121,  # 11 x 11 over [-5.12, 5.12]^2
    "beale": 1,
    "six_hump_camel": 6,
    "saddle": 0,
    "monkey_saddle": 0,
}
WITH_MINIMA = [name for name in names() if EXPECTED_MINIMA[name]]


def test_the_registry_has_every_function_of_the_lab():
    assert set(names()) == set(REFERENCE)


@pytest.mark.parametrize("name", names())
def test_values_match_the_numpy_formula_on_a_batch(name):
    fn = get(name)
    rng = np.random.default_rng(0)
    (xmin, xmax), (ymin, ymax) = fn.bounds
    points = np.column_stack([rng.uniform(xmin, xmax, 50), rng.uniform(ymin, ymax, 50)])
    batched = points.reshape(5, 10, 2)
    values = fn(torch.tensor(batched))
    assert values.shape == (5, 10) and values.dtype == torch.float64
    expected = REFERENCE[name](batched[..., 0], batched[..., 1])
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-13, atol=1e-12)
    single = fn(torch.tensor(points[0]))
    assert single.shape == () and math.isclose(float(single), float(expected[0, 0]), rel_tol=1e-13)
    np.testing.assert_allclose(fn.evaluate(points), expected.ravel(), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("name", WITH_MINIMA)
def test_every_listed_minimum_has_zero_gradient_and_positive_definite_hessian(name):
    fn = get(name)
    assert fn.minima.shape == (EXPECTED_MINIMA[name], 2)
    assert fn.minimum_values.shape == (EXPECTED_MINIMA[name],)
    gradients = fn.grad(fn.minima)
    assert float(gradients.norm(dim=-1).max()) < 1e-6
    eigenvalues = torch.linalg.eigvalsh(fn.hessian(fn.minima))
    assert float(eigenvalues.min()) > 0
    (xmin, xmax), (ymin, ymax) = fn.bounds
    assert np.all((fn.minima[:, 0] >= xmin) & (fn.minima[:, 0] <= xmax))
    assert np.all((fn.minima[:, 1] >= ymin) & (fn.minima[:, 1] <= ymax))


@pytest.mark.parametrize("name", WITH_MINIMA)
def test_the_global_minimum_comes_first_and_values_are_the_function_there(name):
    fn = get(name)
    np.testing.assert_array_equal(fn.minimum_values, fn.evaluate(fn.minima))
    assert fn.minimum_values[0] == fn.minimum_values.min()
    np.testing.assert_array_equal(fn.global_minimum, fn.minima[0])
    assert fn.global_minimum_value == fn.minimum_values[0]


@pytest.mark.parametrize("name", names())
def test_listed_saddles_have_zero_gradient_and_are_not_extrema(name):
    fn = get(name)
    assert len(fn.saddles) >= 1 or name in ("quadratic", "rosenbrock")
    if not len(fn.saddles):
        return
    assert float(fn.grad(fn.saddles).norm(dim=-1).max()) < 1e-6
    eigenvalues = torch.linalg.eigvalsh(fn.hessian(fn.saddles))
    # Indefinite, or (monkey saddle) a zero Hessian whose third-order term has both signs.
    assert torch.all((eigenvalues[:, 0] < 0) & (eigenvalues[:, 1] > 0) | (eigenvalues == 0).all(1))


def test_monkey_saddle_goes_down_and_up_along_a_line_through_the_origin():
    fn = get("monkey_saddle")
    t = torch.tensor([-1e-2, 1e-2], dtype=torch.float64)
    values = fn(torch.stack([t, torch.zeros_like(t)], dim=-1))
    assert values[0] < 0 < values[1]


@pytest.mark.parametrize("name", names())
def test_a_dense_newton_search_finds_exactly_the_listed_minima_and_saddles(name):
    fn = get(name)
    found = critical_points(fn, n=161)
    for kind, listed in (("minima", fn.minima), ("saddles", fn.saddles)):
        assert len(found[kind]) == len(listed), f"{kind}: found {found[kind]}, listed {listed}"
        for point in found[kind]:
            assert np.linalg.norm(listed - point, axis=1).min() < 1e-8, f"{kind}: {point}"


def test_beale_has_no_other_minimum_on_a_wider_region():
    fn = get("beale")
    found = critical_points(fn, n=241, bounds=((-10.0, 10.0), (-10.0, 10.0)))
    np.testing.assert_allclose(found["minima"], [[3.0, 0.5]], atol=1e-12)


def test_sincos_bowl_has_no_critical_point_outside_radius_one():
    # |grad of sin(4x)cos(4y)| <= 4 < |grad of 2(x^2 + y^2)| = 4r beyond r = 1: the four listed
    # minima are all of them in the whole plane.
    fn = get("sincos_bowl")
    angles = np.linspace(0, 2 * np.pi, 400)
    for radius in (1.0001, 1.5, 3.0):
        ring = radius * np.column_stack([np.cos(angles), np.sin(angles)])
        assert float(fn.grad(ring).norm(dim=-1).min()) > 0
    assert np.linalg.norm(fn.minima, axis=1).max() < 1


def test_six_hump_camel_matches_the_published_minima():
    fn = get("six_hump_camel")
    np.testing.assert_allclose(fn.global_minima, [[0.0898, -0.7126], [-0.0898, 0.7126]], atol=1e-4)
    np.testing.assert_allclose(fn.global_minimum_value, -1.0316, atol=1e-4)
    assert len(fn.global_minima) == 2


def test_himmelblau_matches_the_published_minima_to_6_decimals():
    published = [(3, 2), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
    fn = get("himmelblau")
    np.testing.assert_allclose(fn.minima, published, atol=1e-6)
    np.testing.assert_allclose(fn.minimum_values, 0, atol=1e-20)
    assert len(fn.global_minima) == 4


def test_rastrigin_minima_are_the_separable_one_dimensional_roots():
    fn = get("rastrigin")
    root = fn.minima[np.abs(fn.minima).max(axis=1) > 0.5].max()
    # The 1-D part t^2 - 10 cos(2 pi t) is stationary where 2t + 20 pi sin(2 pi t) = 0.
    assert abs(2 * root + 20 * math.pi * math.sin(2 * math.pi * root)) < 1e-10
    assert fn.global_minimum_value == 0


def test_rosenbrock_gradient_is_the_closed_form():
    fn = get("rosenbrock")
    x, y = 0.3, -0.7
    expected = [-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)]
    np.testing.assert_allclose(fn.grad([x, y]).numpy(), expected, rtol=1e-14)


def test_rosenbrock_parameters_move_the_minimum():
    fn = get("rosenbrock", a=2.0, b=10.0)
    np.testing.assert_allclose(fn.minima, [[2.0, 4.0]])
    assert fn.global_minimum_value == 0
    assert float(fn.grad(fn.minima).norm()) == 0


@pytest.mark.parametrize("angle", [0.0, 0.7])
def test_quadratic_hessian_has_the_chosen_condition_number(angle):
    fn = get("quadratic", condition=25.0, angle=angle)
    hessian = fn.hessian([0.3, -0.2]).numpy()
    eigenvalues = np.linalg.eigvalsh(hessian)
    np.testing.assert_allclose(eigenvalues, [1.0, 25.0], rtol=1e-12)
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, s], [-s, c]])
    np.testing.assert_allclose(hessian, rotation.T @ np.diag([1.0, 25.0]) @ rotation, atol=1e-12)
    assert fn.lr == pytest.approx(1 / 25)


@pytest.mark.parametrize("name", names())
def test_the_suggested_step_is_stable_at_the_minima(name):
    # Gradient descent with fn.lr contracts near a minimum only if lr * lambda_max < 2.
    fn = get(name)
    if len(fn.minima):
        assert fn.lr * float(torch.linalg.eigvalsh(fn.hessian(fn.minima)).max()) < 2


def test_functions_pickle_for_worker_processes():
    for name in names():
        fn = get(name)
        copy = pickle.loads(pickle.dumps(fn))
        np.testing.assert_array_equal(copy.evaluate(fn.minima), fn.minimum_values)
        assert copy.name == fn.name and copy.bounds == fn.bounds


def test_bad_names_parameters_and_shapes_are_input_errors():
    with pytest.raises(InputError, match="unknown toy function 'rosenbrok'"):
        get("rosenbrok")
    with pytest.raises(InputError, match="unexpected parameters"):
        get("himmelblau", condition=3)
    with pytest.raises(InputError, match="condition must be"):
        get("quadratic", condition=0.5)
    with pytest.raises(InputError, match=r"shape \(\.\.\., 2\)"):
        get("beale")(torch.zeros(3))


def test_nearest_minimum_respects_the_tolerance():
    fn = get("himmelblau")
    assert fn.nearest_minimum(fn.minima[2] + 1e-3) == 2
    assert fn.nearest_minimum(fn.minima[2] + 1.0) is None
    assert fn.nearest_minimum([np.nan, 0.0]) is None
    assert get("saddle").nearest_minimum([0.0, 0.0]) is None


def test_a_custom_function_works_like_a_registered_one():
    fn = ToyFunction(
        name="shifted_bowl",
        formula="(x - 1)^2 + y^2",
        expression=_shifted_bowl,
        bounds=((-2, 2), (-2, 2)),
        minima=[(1.0, 0.0)],
        saddles=[],
        start=(-1.0, 1.0),
        lr=0.25,
    )
    assert get(fn) is fn
    assert fn.minimum_values.tolist() == [0.0]
    assert "shifted_bowl" in repr(fn)


def _shifted_bowl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - 1) ** 2 + y**2

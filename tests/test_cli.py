"""The command line: what it writes must equal what the library computes from the same inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import h5py
import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

import lossvista as lv
from lossvista.checkpoint import load_checkpoint
from lossvista.cli import main

sys.path.insert(0, str(Path(__file__).parent))  # `cli_models:...` works however pytest imports
import cli_models

MODELS = Path(__file__).parent / "cli_models.py"
FILE_MODEL = f"{MODELS}:make_model"
FILE_DATA = f"{MODELS}:make_data"


# -- helpers and fixtures ---------------------------------------------------------------------------
def run(*args: object, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def run_fails(*args: object, code: int) -> str:
    result = run(*args, ok=False)
    assert result.exit_code == code, result.output + repr(result.exception)
    assert isinstance(result.exception, SystemExit)  # a clean click error, not a crash
    assert "Traceback" not in result.output
    return result.output


def slice_args(command: str, out: Path, checkpoint: Path | None, *extra: object) -> list[object]:
    args: list[object] = [command, "--model", FILE_MODEL, "--data", FILE_DATA, "--out", out]
    if checkpoint is not None:
        args += ["--checkpoint", checkpoint]
    return [*args, "--device", "cpu", "--quiet", *extra]


def objective_for(checkpoint: Path | None, **kwargs) -> lv.Objective:
    """The objective the CLI should have built: same factory, checkpoint and data."""
    model = cli_models.make_model()
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    kwargs.setdefault("metrics", ["accuracy"])
    return lv.Objective(model, F.cross_entropy, cli_models.make_data(), **kwargs)


def moved(obj: lv.Objective, coefficients, directions) -> dict[str, torch.Tensor]:
    """Parameters theta + sum_i c_i d_i of the objective's model."""
    theta = obj.parameters()
    return {
        n: theta[n] + sum(float(c) * d[n] for c, d in zip(coefficients, directions)) for n in theta
    }


def assert_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert image[..., :3].std() > 0.01  # something was drawn


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    model = cli_models.make_model()
    x, y = cli_models.make_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "trained.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def permuted(trained, tmp_path_factory) -> Path:
    """The trained network with its hidden units reversed: same function, other weights."""
    state = torch.load(trained, weights_only=True)
    order = torch.arange(cli_models.HIDDEN).flip(0)
    state["0.weight"], state["0.bias"] = state["0.weight"][order], state["0.bias"][order]
    state["2.weight"] = state["2.weight"][:, order]
    path = tmp_path_factory.mktemp("ckpt") / "permuted.pt"
    torch.save(state, path)
    return path


class _Opaque:
    """Refused by torch.load(weights_only=True)."""


# -- plane, line, interpolate -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_spec", "data_spec"),
    [(FILE_MODEL, FILE_DATA), ("cli_models:make_model", "cli_models:make_data")],
    ids=["file-path", "module-path"],
)
def test_plane_surface_equals_the_objective(tmp_path, trained, model_spec, data_spec):
    out = tmp_path / "surf.h5"
    result = run(
        "plane", "--model", model_spec, "--data", data_spec, "--checkpoint", trained,
        "--out", out, "--steps", "7,5", "--span", "-1:1,-0.5:0.5", "--device", "cpu",
    )  # fmt: skip
    surface = lv.load(out)
    assert surface.kind == "plane" and surface.shape == (7, 5)
    np.testing.assert_allclose(surface.coords[0], np.linspace(-1, 1, 7))
    np.testing.assert_allclose(surface.coords[1], np.linspace(-0.5, 0.5, 5))
    assert surface.complete and set(surface.metrics) == {"loss", "accuracy"}

    obj = objective_for(trained)
    expected = obj.evaluate()
    assert np.isfinite(surface.center["loss"])
    assert surface.center["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert surface.values["loss"][3, 2] == pytest.approx(expected["loss"], rel=1e-5)
    assert surface.center_check["ok"]
    # The directions are the library's filter-normalised ones for --seed 0, and a corner of the
    # grid is the objective at theta + x d1 + y d2.
    d1, d2 = lv.random_directions(obj, 2, norm="filter", ignore=("biasbn",), seed=0)
    for name in d1:
        torch.testing.assert_close(surface.directions[0][name], d1[name])
        torch.testing.assert_close(surface.directions[1][name], d2[name])
    corner = obj.evaluate(at=moved(obj, (1.0, -0.5), (d1, d2)))
    assert surface.values["loss"][6, 0] == pytest.approx(corner["loss"], rel=1e-5)
    assert surface.values["accuracy"][6, 0] == pytest.approx(corner["accuracy"])

    for png in ("surf_contour.png", "surf_surface3d.png"):
        assert_png(tmp_path / png)
        assert png in result.output
    assert f"loss {expected['loss']:.6g}" in result.output
    assert str(out) in result.output


def test_line_values_and_picture(tmp_path, trained):
    out = tmp_path / "line.h5"
    run(*slice_args("line", out, trained, "--steps", 9, "--span", "-2:2", "--norm", "layer",
                    "--ignore", "none", "--seed", 3))  # fmt: skip
    surface = lv.load(out)
    assert surface.kind == "line" and surface.shape == (9,)
    np.testing.assert_allclose(surface.coords[0], np.linspace(-2, 2, 9))
    obj = objective_for(trained)
    (d,) = lv.random_directions(obj, 1, norm="layer", ignore=(), seed=3)
    for name in d:
        torch.testing.assert_close(surface.directions[0][name], d[name])
    assert surface.values["loss"][4] == pytest.approx(obj.loss(), rel=1e-5)
    end = obj.evaluate(at=moved(obj, (-2.0,), (d,)))["loss"]
    assert surface.values["loss"][0] == pytest.approx(end, rel=1e-5)
    assert_png(tmp_path / "line.png")


def test_line_without_checkpoint_is_the_factory_model(tmp_path):
    out = tmp_path / "init.h5"
    run(*slice_args("line", out, None, "--steps", 5))
    assert lv.load(out).center["loss"] == pytest.approx(objective_for(None).loss(), rel=1e-6)


def test_interpolate_with_start_prints_the_stored_barrier(tmp_path, trained, permuted):
    out = tmp_path / "path.h5"
    result = run(
        "interpolate", "--model", FILE_MODEL, "--data", FILE_DATA, "--start", permuted,
        "--checkpoint", trained, "--out", out, "--steps", 9, "--span", "-0.5:1.5",
        "--device", "cpu",
    )  # fmt: skip
    path = lv.load(out)
    assert isinstance(path, lv.Interpolation)
    np.testing.assert_allclose(path.coords[0], np.linspace(-0.5, 1.5, 9))
    printed = float(re.search(r"barrier: (\S+)", result.output).group(1))
    assert printed == pytest.approx(path.barrier, rel=1e-5)
    assert path.barrier > 0.1  # permuted hidden units: same loss at both ends, a bump between
    # Both ends are the checkpoints' own losses (a model without BatchNorm: recompute is a no-op).
    assert path.endpoints["a"]["loss"] == pytest.approx(objective_for(permuted).loss(), rel=1e-5)
    assert path.endpoints["b"]["loss"] == pytest.approx(objective_for(trained).loss(), rel=1e-5)
    assert path.values["loss"][2] == pytest.approx(path.endpoints["a"]["loss"], rel=1e-5)
    assert path.values["loss"][6] == pytest.approx(path.endpoints["b"]["loss"], rel=1e-5)
    assert_png(tmp_path / "path.png")


def test_interpolate_without_start_begins_at_the_factory_initialisation(tmp_path, trained):
    out = tmp_path / "from_init.h5"
    result = run(*slice_args("interpolate", out, trained, "--steps", 6))
    assert result.output == ""  # --quiet
    path = lv.load(out)
    init, final = cli_models.make_model(), load_checkpoint(cli_models.make_model(), trained)
    assert path.endpoints["a"]["loss"] == pytest.approx(objective_for(None).loss(), rel=1e-5)
    assert path.endpoints["b"]["loss"] == pytest.approx(objective_for(trained).loss(), rel=1e-5)
    assert path.settings["objective"]["bn"] == "eval"  # no BatchNorm: recompute is a no-op
    direction = path.directions[0]
    for name, p in final.named_parameters():
        torch.testing.assert_close(
            direction[name], p.detach() - dict(init.named_parameters())[name]
        )


def test_unseeded_factory_repeats_under_seed_so_resume_works(tmp_path, trained):
    out = tmp_path / "unseeded.h5"
    args = ["interpolate", "--model", f"{MODELS}:make_unseeded_model", "--data", FILE_DATA,
            "--checkpoint", trained, "--out", out, "--steps", 5, "--device", "cpu"]  # fmt: skip
    run(*args)
    second = run(*args)  # the same initialisation, so the file's settings match
    assert "0 computed now, 5 taken from the existing file" in second.output
    other_seed = run(*args, "--seed", 1, ok=False)
    assert other_seed.exit_code == 1 and "--no-resume" in other_seed.output


# -- resume -----------------------------------------------------------------------------------------
def test_resume_computes_only_missing_points(tmp_path, trained):
    out = tmp_path / "resume.h5"
    args = slice_args("line", out, trained, "--steps", 9)
    run(*args)
    original = lv.load(out).values["loss"].copy()
    with h5py.File(out, "r+") as f:  # a marker the engine would overwrite if it recomputed
        f["loss"][0] = 123.0
    second = run(*[a for a in args if a != "--quiet"])
    assert "0 computed now, 9 taken from the existing file" in second.output
    assert lv.load(out).values["loss"][0] == 123.0

    with h5py.File(out, "r+") as f:  # an interrupted run: points 2 and 3 missing
        f["computed"][2:4] = 0
        f["loss"][2:4] = np.nan
    third = run(*[a for a in args if a != "--quiet"])
    assert "2 computed now, 7 taken from the existing file" in third.output
    values = lv.load(out).values["loss"]
    assert values[0] == 123.0
    np.testing.assert_allclose(values[2:4], original[2:4], rtol=1e-6)

    run(*args, "--no-resume")  # recomputes everything
    np.testing.assert_allclose(lv.load(out).values["loss"], original, rtol=1e-6)


def test_resume_refuses_a_file_made_with_other_settings(tmp_path, trained):
    out = tmp_path / "mismatch.h5"
    run(*slice_args("line", out, trained, "--steps", 5))
    output = run_fails(*slice_args("line", out, trained, "--steps", 7), code=1)
    assert "steps" in output and "--no-resume" in output


# -- checkpoints ------------------------------------------------------------------------------------
def test_checkpoint_with_a_wrong_key_names_it(tmp_path, trained):
    state = torch.load(trained, weights_only=True)
    state["0.kernel"] = state.pop("0.weight")
    bad = tmp_path / "renamed.pt"
    torch.save(state, bad)
    output = run_fails(*slice_args("line", tmp_path / "x.h5", bad), code=2)
    assert "'0.weight'" in output and "'0.kernel'" in output and "--checkpoint" in output
    assert not (tmp_path / "x.h5").exists()


def test_checkpoint_with_a_wrong_shape_names_key_and_shapes(tmp_path):
    wide = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    bad = tmp_path / "wide.pt"
    torch.save(wide.state_dict(), bad)
    output = run_fails(*slice_args("plane", tmp_path / "x.h5", bad), code=2)
    assert "0.weight: checkpoint (16, 4) vs model (8, 4)" in " ".join(output.split())


def test_pickled_checkpoint_needs_unsafe_load(tmp_path, trained):
    state = torch.load(trained, weights_only=True)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": state, "note": _Opaque()}, unsafe)
    out = tmp_path / "unsafe.h5"
    output = run_fails(*slice_args("line", out, unsafe, "--steps", 5), code=2)
    assert "--unsafe-load" in output
    run(*slice_args("line", out, unsafe, "--steps", 5, "--unsafe-load"))
    assert lv.load(out).center["loss"] == pytest.approx(objective_for(trained).loss(), rel=1e-6)


def test_missing_checkpoint_file(tmp_path):
    output = run_fails(*slice_args("line", tmp_path / "x.h5", tmp_path / "nope.pt"), code=2)
    assert "nope.pt" in output and "does not exist" in output


# -- specs and option values ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("cli_models", "has no ':'"),
        ("cli_models:", "names no callable"),
        ("no_such_module_xyz:make", "module 'no_such_module_xyz' not found"),
        ("cli_models:make_modle", "has no attribute 'make_modle'; did you mean 'make_model'"),
        ("cli_models:NOT_CALLABLE", "is a int, not a callable"),
        ("cli_models:not_a_model", "returned a list, expected a torch.nn.Module"),
        ("cli_models:broken_factory", "RuntimeError: the factory is broken on purpose"),
        ("cli_models:needs_arguments", "give every parameter a default"),
        ("tests/no_such_file.py:make", "does not exist"),
    ],
)
def test_bad_model_specs_are_usage_errors(tmp_path, spec, fragment):
    output = run_fails(
        "line", "--model", spec, "--data", FILE_DATA, "--out", tmp_path / "x.h5", code=2
    )
    assert "--model" in output and fragment in " ".join(output.split())


def test_bad_data_is_a_usage_error_naming_the_spec(tmp_path):
    output = run_fails(
        "line", "--model", FILE_MODEL, "--data", "cli_models:not_a_model",
        "--out", tmp_path / "x.h5", code=2,
    )  # fmt: skip
    assert "--data" in output and "cli_models:not_a_model" in output


@pytest.mark.parametrize(
    ("command", "option", "value", "fragment"),
    [
        ("line", "--span", "1:-1", "MIN must be below MAX (write -1:1)"),
        ("line", "--span", "0:0", "MIN and MAX are equal"),
        ("line", "--span", "-1..1", "is not MIN:MAX"),
        ("line", "--span", "-1:1,-2:2", "one range MIN:MAX"),
        ("plane", "--span", "-1:1,2:1", "MIN must be below MAX"),
        ("line", "--steps", "1", "at least 2 points"),
        ("plane", "--steps", "5,1", "at least 2 points"),
        ("plane", "--steps", "5,5,5", "one per axis"),
        ("line", "--steps", "ten", "is not one whole number"),
        ("plane", "--ignore", "nosuch.*", "matches no parameter name"),
        ("line", "--loss", "hinge", "unknown loss 'hinge'"),
        ("line", "--metric", "f1", "unknown metric 'f1'"),
        ("line", "--norm", "unit", "'unit' is not one of"),
    ],
)
def test_bad_option_values_are_rejected_clearly(
    tmp_path, trained, command, option, value, fragment
):
    output = run_fails(*slice_args(command, tmp_path / "x.h5", trained, option, value), code=2)
    assert option in output and fragment in " ".join(output.split())
    assert not (tmp_path / "x.h5").exists()


def test_library_errors_become_clean_messages(tmp_path, trained):
    output = run_fails(*slice_args("line", tmp_path / "x.h5", trained, "--params", "fc.*"), code=1)
    assert "'fc.*' matches no parameter" in output
    output = run_fails(
        "line", "--model", f"{MODELS}:make_bn_model", "--data", FILE_DATA,
        "--out", tmp_path / "y.h5", "--strategy", "vmap", "--bn", "recompute", code=1,
    )  # fmt: skip
    assert "recompute" in output
    created = tmp_path / "no" / "z.h5"  # a missing folder is made, not a traceback (issue 8)
    run(*slice_args("line", created, trained))
    assert created.is_file()
    (tmp_path / "file").write_text("")
    output = run_fails(*slice_args("line", tmp_path / "file" / "z.h5", trained), code=2)
    assert "cannot create the folder" in output


def test_interrupted_run_says_how_to_resume(tmp_path, trained, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lossvista.cli.slices.line_slice", interrupted)
    output = run_fails(*slice_args("line", tmp_path / "x.h5", trained), code=1)
    assert "interrupted" in output and "same command again" in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_usage_error(tmp_path, trained):
    args = slice_args("line", tmp_path / "x.h5", trained)
    args[args.index("--device") + 1] = "cuda"
    output = run_fails(*args, code=2)
    assert "--device" in output and "CUDA is not available" in output


# -- loss, metrics, data forms, BatchNorm -----------------------------------------------------------
def test_mse_with_a_metric_given_by_spec(tmp_path, trained):
    out = tmp_path / "mse.h5"
    run(
        "line", "--model", FILE_MODEL, "--data", f"{MODELS}:make_regression_data",
        "--checkpoint", trained, "--out", out, "--loss", "mse", "--metric", "cli_models:top2",
        "--steps", 5, "--device", "cpu", "--no-png",
    )  # fmt: skip
    surface = lv.load(out)
    assert set(surface.metrics) == {"loss", "top2"}
    model = load_checkpoint(cli_models.make_model(), trained)
    x, y = cli_models.make_regression_data()
    with torch.no_grad():
        output = model(x)
        expected = F.mse_loss(output, y).item()
        top2 = cli_models.top2(output, y).item()
    assert surface.center["loss"] == pytest.approx(expected, rel=1e-6)
    assert surface.center["top2"] == pytest.approx(top2)
    assert not (tmp_path / "mse.png").exists()  # --no-png


def test_loss_given_as_an_nn_module_class(tmp_path, trained):
    out = tmp_path / "cls.h5"
    run(*slice_args("line", out, trained, "--loss", "torch.nn:CrossEntropyLoss", "--steps", 3))
    surface = lv.load(out)
    assert surface.metrics == ["loss"]  # the default accuracy comes with --loss cross_entropy only
    assert surface.center["loss"] == pytest.approx(objective_for(trained).loss(), rel=1e-6)


@pytest.mark.parametrize("factory", ["make_loader", "make_dataset"])
def test_loader_and_dataset_give_the_tensor_value(tmp_path, trained, factory):
    out = tmp_path / f"{factory}.h5"
    run(
        "line", "--model", FILE_MODEL, "--data", f"cli_models:{factory}", "--checkpoint",
        trained, "--out", out, "--steps", 3, "--device", "cpu", "--quiet", "--no-png",
    )  # fmt: skip
    assert lv.load(out).center["loss"] == pytest.approx(objective_for(trained).loss(), rel=1e-6)


def test_subset_adds_standard_errors(tmp_path, trained):
    out = tmp_path / "subset.h5"
    result = run(*[a for a in slice_args("line", out, trained, "--subset", 20, "--steps", 3)
                   if a != "--quiet"])  # fmt: skip
    surface = lv.load(out)
    assert "loss_stderr" in surface.values and "±" in result.output
    expected = objective_for(trained, subset=20, seed=0).evaluate()
    assert surface.center["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert surface.center["loss_stderr"] == pytest.approx(expected["loss_stderr"], rel=1e-6)


def test_batchnorm_policies(tmp_path):
    model = cli_models.make_bn_model()
    x, y = cli_models.make_data()
    with torch.no_grad():  # running statistics far from the data's
        model[1].running_mean.fill_(3.0)
    checkpoint = tmp_path / "bn.pt"
    torch.save(model.state_dict(), checkpoint)
    centres = {}
    for bn in ("eval", "recompute"):
        out = tmp_path / f"{bn}.h5"
        run(
            "line", "--model", f"{MODELS}:make_bn_model", "--data", FILE_DATA, "--checkpoint",
            checkpoint, "--out", out, "--bn", bn, "--steps", 3, "--device", "cpu", "--no-png",
        )  # fmt: skip
        centres[bn] = lv.load(out).center["loss"]
        expected = lv.Objective(model, F.cross_entropy, (x, y), bn=bn).loss()
        assert centres[bn] == pytest.approx(expected, rel=1e-6)
    assert centres["eval"] != pytest.approx(centres["recompute"], rel=1e-3)


def test_interpolate_warns_about_batchnorm_in_eval_mode(tmp_path):
    model = cli_models.make_bn_model()
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # not the initialisation, so the path has a length
    checkpoint = tmp_path / "bn.pt"
    torch.save(model.state_dict(), checkpoint)
    result = run(
        "interpolate", "--model", f"{MODELS}:make_bn_model", "--data", FILE_DATA,
        "--checkpoint", checkpoint, "--out", tmp_path / "p.h5", "--bn", "eval", "--steps", 3,
        "--device", "cpu", "--no-png", "--quiet", "--seed", 1,
    )  # fmt: skip
    assert "Warning: the model has BatchNorm and bn='eval'" in result.output
    assert "Traceback" not in result.output


# -- plot and info ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plane_file(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plane") / "plane.h5"
    run(*slice_args("plane", out, trained, "--steps", "6,4", "--no-png"))
    return out


def test_plot_writes_pngs(plane_file, tmp_path):
    result = run("plot", plane_file)
    default = plane_file.with_suffix(".png")
    assert str(default) in result.output
    assert_png(default)
    custom = tmp_path / "heat.png"
    run("plot", plane_file, "--kind", "heatmap", "--metric", "accuracy", "--out", custom)
    assert_png(custom)
    run("plot", plane_file, "--kind", "surface3d", "--log", "--vmax", 5, "--out", tmp_path)
    assert_png(tmp_path / "plane.png")  # a folder as --out takes the file's stem


def test_plot_errors_are_clean(plane_file, tmp_path):
    output = run_fails("plot", plane_file, "--kind", "line", "--out", tmp_path / "x.png", code=1)
    assert "line" in output
    output = run_fails("plot", plane_file, "--metric", "f1", "--out", tmp_path / "y.png", code=1)
    assert "f1" in output
    output = run_fails("plot", tmp_path / "missing.h5", code=2)
    assert "does not exist" in output


def test_info_describes_the_file(plane_file):
    surface = lv.load(plane_file)
    output = run("info", plane_file).output
    assert re.search(r"shape\s+6 x 4", output)
    assert re.search(r"computed\s+24 / 24 points", output)
    assert f"loss {surface.center['loss']:.6g}" in output
    assert f"accuracy {surface.center['accuracy']:.6g}" in output
    assert re.search(r"centre check\s+ok", output)
    assert "random, filter normalisation, ignore biasbn, seed 0" in output
    assert "engine" in output and "strategy" in output
    assert f"lossvista {lv.__version__}" in output


def test_info_on_an_interpolation_prints_barrier(tmp_path, trained, permuted):
    out = tmp_path / "path.h5"
    run(*slice_args("interpolate", out, trained, "--start", permuted, "--steps", 5))
    output = run("info", out).output
    assert f"barrier      {lv.load(out).barrier:.6g}" in output
    assert "end a" in output and "end b" in output


def test_info_and_plot_read_legacy_files(tmp_path):
    legacy = tmp_path / "legacy.h5"
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 3)
    loss = (x[None, :] ** 2 + y[:, None] ** 2).reshape(-1)  # the 2018 layout: (len(y), len(x))
    with h5py.File(legacy, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"], f["train_acc"] = loss, 1.0 - loss / 4
        f.attrs["dir_file"] = "directions.h5"
    output = run("info", legacy).output
    assert "legacy" in output and re.search(r"shape\s+5 x 3", output)
    assert "dir_file: directions.h5" in output
    run("plot", legacy)
    assert_png(tmp_path / "legacy.png")


# -- the group --------------------------------------------------------------------------------------
def test_demo_command_calls_run_demo(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(
        "lossvista.demo.run_demo", lambda out, **kwargs: calls.append((out, kwargs))
    )
    run("demo", "--out", tmp_path / "d", "--seed", 2, "--quiet")
    assert calls == [(tmp_path / "d", {"seed": 2, "progress": False, "echo": None})]


def test_python_m_lossvista_help():
    done = subprocess.run(
        [sys.executable, "-m", "lossvista", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for command in ("line", "plane", "interpolate", "plot", "info", "demo"):
        assert command in done.stdout


@pytest.mark.parametrize("name", sorted(main.commands))
def test_help_lists_and_explains_every_option(name):
    command = main.commands[name]
    output = run(name, "--help").output
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help text"
            for opt in param.opts + param.secondary_opts:
                assert opt in output, f"{name} --help does not mention {opt}"
    assert command.help


def test_line_with_perturbed_batchnorm_statistics(tmp_path):
    model = cli_models.make_bn_model()
    x, y = cli_models.make_data()
    checkpoint = tmp_path / "bn.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "perturb.h5"
    run(
        "line", "--model", f"{MODELS}:make_bn_model", "--data", FILE_DATA, "--checkpoint",
        checkpoint, "--out", out, "--bn", "perturb", "--steps", 3, "--span", "-0.1:0.1",
        "--device", "cpu", "--no-png", "--seed", 2,
    )  # fmt: skip
    line = lv.load(out)
    assert line.settings["objective"]["bn"] == "perturb"
    (direction,) = line.directions
    assert {"1.running_mean", "1.running_var"} <= set(direction)  # the statistics move too
    objective = lv.Objective(model, F.cross_entropy, (x, y), bn="perturb")
    assert line.center["loss"] == pytest.approx(objective.loss(), rel=1e-6)
    origin = {**objective.parameters(), **objective.perturbed_buffers()}
    end = {name: origin[name] + 0.1 * tensor for name, tensor in direction.items()}
    assert line.values["loss"][-1] == pytest.approx(objective.evaluate(at=end)["loss"], rel=1e-5)


# -- measurement summaries: files lv.load and lossvista report read -------------------------------
def test_hessian_summary_without_the_optional_parts_loads_back(tmp_path, trained):
    out = tmp_path / "curv"
    run(
        "hessian", "--model", FILE_MODEL, "--data", FILE_DATA, "--checkpoint", trained,
        "--top-k", 2, "--no-critical", "--device", "cpu", "--quiet", "--out", out,
    )  # fmt: skip
    readable = json.loads((out / "hessian.json").read_text())
    summary = lv.load(out / "hessian.json")
    assert isinstance(summary, lv.HessianSummary)
    assert (summary.critical_point, summary.trace, summary.density) == (None, None, None)
    assert readable["critical_point"] is None and readable["results"]["critical_point"] is None
    assert summary.eigs.values.tolist() == readable["eigenvalues"]
    assert summary.eigs.residuals.tolist() == readable["residuals"]
    assert summary.eigs.vectors == () and summary.settings == readable["settings"]
    expected = lv.hessian_eigs(objective_for(trained), 2)
    np.testing.assert_allclose(summary.eigs.values, expected.values, rtol=1e-5)
    assert lv.load(summary.save(tmp_path / "again.json")) == summary


def test_sharpness_summary_of_a_nan_loss_loads_back_with_its_nan(tmp_path):
    broken = cli_models.make_model()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    checkpoint = tmp_path / "nan.pt"
    torch.save(broken.state_dict(), checkpoint)
    out = tmp_path / "nan.json"
    run(
        "sharpness", "--model", FILE_MODEL, "--data", FILE_DATA, "--checkpoint", checkpoint,
        "--kind", "worst", "--rho", 0.02, "--restarts", 1, "--ascent-steps", 3, "--device", "cpu",
        "--quiet", "--out", out,
    )  # fmt: skip
    readable = json.loads(out.read_text(), parse_constant=pytest.fail)  # strict JSON throughout
    assert readable["sharpness"]["value"] is None  # the readable key: null, as before
    loaded = lv.load(out)
    assert isinstance(loaded, lv.Sharpness) and np.isnan(loaded.value)  # the NaN itself
    model = cli_models.make_model()
    load_checkpoint(model, checkpoint)
    obj = lv.Objective(model, F.cross_entropy, cli_models.make_data())
    with pytest.warns(lv.NonFiniteLossWarning):
        expected = lv.sharpness(obj, kind="worst", rho=0.02, restarts=1, ascent_steps=3)
    assert loaded == expected

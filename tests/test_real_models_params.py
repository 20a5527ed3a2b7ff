"""Modern architectures, correct by default (issue 12): buffers updated inside forward, frozen
parameters, every normalisation layer, (in, out) weights, LoRA at initialisation, bfloat16,
wrapped models and tied weights, and models vmap cannot batch. Plain torch models only."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lossvista as lv
from conftest import assert_unchanged, classification_data, make_mlp, snapshot
from lossvista import _tuning
from lossvista.checkpoint import load_checkpoint
from lossvista.engine import EngineConfig, PointEvaluator
from lossvista.params import ignored_names, select_parameters

F = nn.functional


def _grid(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))


def _at(model: nn.Module, directions, coefficients) -> dict[str, torch.Tensor]:
    """``origin + sum_i c_i d_i`` for every parameter of ``model``."""
    return {
        n: p.detach() + sum(c * d[n] for c, d in zip(coefficients, directions, strict=True))
        for n, p in model.named_parameters()
    }


# -- 1. buffers updated inside forward ------------------------------------------------------------
class EMANormaliser(nn.Module):
    """Centres its input with an exponential moving average updated at every forward pass."""

    def __init__(self, width: int, momentum: float = 0.5):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(width, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.mean.mul_(1 - self.momentum).add_(x.mean(0), alpha=self.momentum)
        return x - self.mean


def _ema_model(first: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16), EMANormaliser(16), nn.Tanh(), nn.Linear(16, 3)]
    if first:  # on the input: the update does not depend on the parameters (vmap can batch it)
        layers = [EMANormaliser(8), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize(
    ("first", "config"),
    [
        (False, EngineConfig("loop", 16, 1)),
        (True, EngineConfig("loop", 16, 1)),
        (True, EngineConfig("vmap", 16, 4)),
    ],
)
def test_a_point_does_not_depend_on_the_order_of_evaluation(first, config):
    model = _ema_model(first)
    before = snapshot(model)
    X, y = classification_data(n=40)
    obj = lv.Objective(model, F.cross_entropy, (X, y), batch_size=16)  # three batches a point
    directions = lv.random_directions(model, 2, seed=1)
    coefficients = _grid(8)
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    forward, _ = evaluator.run(coefficients, config=config, progress=False)
    backward, _ = evaluator.run(coefficients[::-1], config=config, progress=False)
    # Oracle: each point evaluated alone, from the model's own buffers.
    alone = [obj.evaluate(at=_at(model, directions, c))["loss"] for c in coefficients]
    np.testing.assert_allclose(forward["loss"], alone, rtol=1e-12)
    np.testing.assert_allclose(backward["loss"][::-1], alone, rtol=1e-12)
    assert len(set(np.round(alone, 6))) == len(alone)  # the points do differ
    assert_unchanged(model, before)


def test_a_grid_through_plane_matches_points_evaluated_alone():
    """The centre check evaluates the objective before the engine: the objective's one-time
    check of the first batch must not leave its buffer update in that first evaluation."""
    model = _ema_model(first=False)
    before = snapshot(model)
    X, y = classification_data(n=40)
    obj = lv.Objective(model, F.cross_entropy, (X, y), batch_size=16)
    directions = lv.random_directions(model, 2, seed=2)
    land = lv.plane(obj, directions, span=(-1, 1), steps=(3, 3), progress=False)
    for i, a in enumerate(land.coords[0]):
        for j, b in enumerate(land.coords[1]):
            alone = obj.evaluate(at=_at(model, directions, (a, b)))["loss"]
            assert land.values["loss"][i, j] == pytest.approx(alone, rel=1e-12)
    assert_unchanged(model, before)


# -- 2. frozen parameters -----------------------------------------------------------------------
def _partly_frozen() -> nn.Module:
    model = make_mlp()
    model[0].requires_grad_(False)  # a frozen first layer (a backbone)
    return model


def test_frozen_parameters_get_no_direction_unless_asked():
    model = _partly_frozen()
    before = snapshot(model)
    (d,) = lv.random_directions(model, 1, seed=3)
    assert d.meta["params"] == "trainable"
    assert not d["0.weight"].any() and not d["0.bias"].any()
    assert d["2.weight"].any() and d["4.weight"].any()
    (every,) = lv.random_directions(model, 1, seed=3, params="all")
    assert every.meta["params"] == "all" and every["0.weight"].any()
    # The trainable entries are those of a model in which nothing is frozen but layer 0 ignored.
    (same,) = lv.random_directions(make_mlp(), 1, seed=3, ignore=("bias", "bn", "0.*"))
    assert d.fingerprint() == same.fingerprint()
    assert_unchanged(model, before)


def test_selection_of_parameters():
    model = _partly_frozen()
    trainable = select_parameters(model)
    assert trainable.label == "trainable"
    assert trainable.names == ("2.weight", "2.bias", "4.weight", "4.bias")
    assert select_parameters(model, "all").names == tuple(n for n, _ in model.named_parameters())
    named = select_parameters(model, "0.*")  # a frozen parameter named explicitly is moved
    assert named == (("0.weight", "0.bias"), ["0.*"])
    model.requires_grad_(False)  # everything frozen (a model prepared for analysis): all, said so
    with pytest.warns(lv.LossvistaWarning, match="params='all'"):
        assert select_parameters(model).label == "all"


def test_objective_moves_trainable_parameters_by_default_and_says_so():
    model = _partly_frozen()
    X, y = classification_data()
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    assert obj.param_names == ("2.weight", "2.bias", "4.weight", "4.bias")
    assert obj.settings()["param_selection"] == "trainable"
    assert lv.Objective(model, F.cross_entropy, (X, y), params="all").param_names == tuple(
        n for n, _ in model.named_parameters()
    )
    with pytest.raises(lv.DirectionError, match="outside the objective's params"):
        lv.line(obj, lv.random_directions(model, 1, params="all")[0], steps=3, progress=False)


# -- 3. every normalisation layer ---------------------------------------------------------------
class LlamaRMSNorm(nn.Module):
    """A normalisation layer from another library: known by its class name."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width) + 0.1 * torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Gain(nn.Module):
    """An anonymous scale: a normalisation layer only by its usual name (``ln_f``)."""

    def __init__(self, width: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width) + 0.1 * torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class NormZoo(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 16)
        self.rms = nn.RMSNorm(16)
        self.layer = nn.LayerNorm(16)
        self.group = nn.GroupNorm(4, 16)
        self.instance = nn.InstanceNorm1d(16, affine=True)
        self.lrn = nn.LocalResponseNorm(2)
        self.llama = LlamaRMSNorm(16)
        self.ln_f = Gain(16)
        self.norm = nn.Linear(16, 3)  # torch's own Linear: not a norm layer whatever its name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.group(self.layer(self.rms(self.fc(x))))
        h = self.instance(h[:, :, None])[:, :, 0]
        h = self.lrn(h[:, :, None])[:, :, 0]
        return self.norm(self.ln_f(self.llama(h)))


NORM_PARAMETERS = {
    "rms.weight",
    "layer.weight",
    "layer.bias",
    "group.weight",
    "group.bias",
    "instance.weight",
    "instance.bias",
    "llama.weight",
    "ln_f.gain",
}


@pytest.mark.parametrize("token", ["norm", "bn"])
def test_every_normalisation_layer_is_ignored_by_type_class_name_or_usual_name(token):
    model = NormZoo().double()
    before = snapshot(model)
    (d,) = lv.random_directions(model, 1, ignore=(token,), seed=1)
    zero = {n for n, t in d.items() if not t.any()}
    assert zero == NORM_PARAMETERS
    (both,) = lv.random_directions(model, 1, ignore=("bias", token), seed=1)
    assert {n for n, t in both.items() if not t.any()} == NORM_PARAMETERS | {"fc.bias", "norm.bias"}
    (alias,) = lv.random_directions(model, 1, ignore=("bias", "bn" if token == "norm" else "norm"))
    assert (
        alias.fingerprint()
        == lv.random_directions(model, 1, ignore=("bias", token))[0].fingerprint()
    )
    assert_unchanged(model, before)


def test_normalisation_layers_of_a_state_dict_are_found_by_their_usual_names():
    state = {
        "model.layers.0.input_layernorm.weight": torch.ones(4),
        "model.layers.0.self_attn.q_proj.weight": torch.ones(4, 4),
        "transformer.h.0.ln_1.weight": torch.ones(4),
        "transformer.h.0.ln_1.bias": torch.ones(4),
        "transformer.ln_f.weight": torch.ones(4),
        "model.norm.weight": torch.ones(4),
        "encoder.norm_proj.weight": torch.ones(4, 4),
    }
    assert ignored_names(state, "norm") == {
        "model.layers.0.input_layernorm.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_1.bias",
        "transformer.ln_f.weight",
        "model.norm.weight",
    }


# -- 4. weights stored as (in, out) -------------------------------------------------------------
class Conv1D(nn.Module):
    """HuggingFace's ``transformers.pytorch_utils.Conv1D`` (GPT-2): ``x @ weight + bias``."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * (1 + torch.arange(nf)))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.reshape(*x.shape[:-1], self.nf)


class TinyGPTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c_fc = Conv1D(12, 8)  # 8 inputs, 12 output units: weight (8, 12)
        self.lin = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.c_fc(x)))


def _column_norms(t: torch.Tensor) -> torch.Tensor:
    return t.double().norm(dim=0)


def test_filter_normalisation_of_conv1d_runs_along_its_output_units():
    model = TinyGPTBlock().double()
    before = snapshot(model)
    (d,) = lv.random_directions(model, 1, seed=2)
    weight = model.c_fc.weight.detach()
    torch.testing.assert_close(_column_norms(d["c_fc.weight"]), _column_norms(weight))
    assert d.meta["filter_axis"] == {"c_fc.weight": 1}
    # Invariance: scaling output unit 5 of the weights scales unit 5 of the direction only.
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.c_fc.weight[:, 5] *= 7.5
    (ds,) = lv.random_directions(scaled, 1, seed=2)
    torch.testing.assert_close(ds["c_fc.weight"][:, 5], 7.5 * d["c_fc.weight"][:, 5])
    others = [j for j in range(12) if j != 5]
    torch.testing.assert_close(ds["c_fc.weight"][:, others], d["c_fc.weight"][:, others])
    assert_unchanged(model, before)


def test_conv1d_directions_slice_store_and_reload(tmp_path):
    model = TinyGPTBlock().double()
    X = torch.randn(30, 8, dtype=torch.float64)
    obj = lv.Objective(model, F.cross_entropy, (X, torch.randint(0, 3, (30,))))
    d1, d2 = lv.random_directions(obj, 2, seed=4)
    assert d1.meta["filter_axis"] == {"c_fc.weight": 1}
    loaded = lv.Direction.load(d1.save(tmp_path / "d.pt"))
    assert loaded.meta == d1.meta and loaded.fingerprint() == d1.fingerprint()
    land = lv.plane(obj, (d1, d2), steps=(3, 3), store=tmp_path / "p.h5", progress=False)
    assert land.settings["directions"][0]["filter_axis"] == {"c_fc.weight": 1}
    again = lv.load(tmp_path / "p.h5")
    np.testing.assert_array_equal(again.values["loss"], land.values["loss"])


def test_filter_axis_per_parameter():
    model = TinyGPTBlock().double()
    (rows,) = lv.random_directions(model, 1, seed=2, filter_axis={"c_fc.*": 0})
    assert "filter_axis" not in rows.meta  # axis 0 everywhere: the 2018 convention
    weight = model.c_fc.weight.detach()
    torch.testing.assert_close(rows["c_fc.weight"].double().norm(dim=1), weight.norm(dim=1))
    (columns,) = lv.random_directions(model, 1, seed=2, filter_axis={"lin.weight": -1})
    assert columns.meta["filter_axis"] == {"c_fc.weight": 1, "lin.weight": 1}
    torch.testing.assert_close(
        _column_norms(columns["lin.weight"]), _column_norms(model.lin.weight)
    )
    with pytest.raises(lv.InputError, match="matches no parameter"):
        lv.random_directions(model, 1, filter_axis={"attn.*": 1})
    with pytest.raises(lv.InputError, match="out of range"):
        lv.random_directions(model, 1, filter_axis={"lin.weight": 2})
    with pytest.raises(lv.InputError, match="norm='filter' only"):
        lv.random_directions(model, 1, norm="layer", filter_axis={"lin.weight": 1})


# -- 5. LoRA at initialisation ------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen base layer plus a trainable low-rank update ``B A``, with ``B = 0`` at first."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(0.3 * torch.randn(rank, base.in_features, dtype=torch.float64))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


def _lora_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        LoRALinear(nn.Linear(8, 16).double()), nn.Tanh(), LoRALinear(nn.Linear(16, 3).double())
    )


@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_lora_at_initialisation_warns_that_normalisation_zeroes_lora_b(norm):
    model = _lora_model()
    before = snapshot(model)
    with pytest.warns(lv.LossvistaWarning, match=r"'0\.lora_B', '2\.lora_B'.*norm='model'"):
        d1, d2 = lv.random_directions(model, 2, norm=norm, seed=1)
    moving = {n for n, t in d1.items() if t.any()}
    assert moving == {"0.lora_A", "2.lora_A"}  # frozen bases: no direction; B: zeroed
    # The plane is exactly flat: with B = 0, moving A changes nothing.
    obj = lv.Objective(model, F.cross_entropy, classification_data())
    land = lv.plane(obj, (d1, d2), steps=(3, 3), progress=False)
    assert np.all(land.values["loss"] == land.values["loss"][1, 1])
    assert_unchanged(model, before)


def test_lora_with_model_normalisation_moves_lora_b_without_warning():
    model = _lora_model()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d1, d2 = lv.random_directions(model, 2, norm="model", seed=1)
        (ignored,) = lv.random_directions(model, 1, ignore=("bias", "*.lora_B"))
    assert d1["0.lora_B"].any() and not d1["0.base.weight"].any()
    assert not ignored["0.lora_B"].any()
    obj = lv.Objective(model, F.cross_entropy, classification_data())
    land = lv.plane(obj, (d1, d2), steps=(3, 3), progress=False)
    assert np.ptp(land.values["loss"]) > 1e-3
    assert_unchanged(model, before)


# -- 6. bfloat16 ----------------------------------------------------------------------------------
def test_a_bfloat16_model_is_sliced_and_its_directions_saved(tmp_path):
    model = make_mlp(dtype=torch.bfloat16)
    before = snapshot(model)
    X, y = classification_data(dtype=torch.bfloat16)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    directions = lv.random_directions(model, 2, seed=1)
    assert all(t.dtype == torch.bfloat16 for t in directions[0].values())
    land = lv.plane(obj, directions, steps=(3, 3), progress=False)
    assert land.center_check["ok"] and land.center_check["rtol"] == 1e-2
    assert land.values["loss"][1, 1] == pytest.approx(obj.loss(), rel=1e-2)
    # The corner equals the model's own loss with the parameters written by hand (in bf16).
    manual = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in manual.named_parameters():
            p.copy_(_at(model, directions, (1.0, 1.0))[name])
        expected = float(F.cross_entropy(manual(X), y))
    assert land.values["loss"][2, 2] == pytest.approx(expected, rel=1e-2)
    path = directions[0].save(tmp_path / "bf16.pt")
    loaded = lv.Direction.load(path)
    assert loaded.fingerprint() == directions[0].fingerprint()
    assert all(torch.equal(loaded[n], directions[0][n]) for n in loaded)
    assert loaded["0.weight"].dtype == torch.bfloat16
    assert_unchanged(model, before)


def test_fingerprints_of_other_dtypes_are_unchanged():
    """The fingerprint hashes raw bytes now; for numpy's dtypes they are numpy's bytes, so
    files written before keep their fingerprints (this value was computed through numpy)."""
    tensors = {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3).T, "n": torch.tensor(3)}
    assert lv.params.fingerprint(tensors) == (
        "1038220716c26110faec63b8704259e3800b09da9ae6ed09fd9c6dd9a91ad96e"
    )


# -- 7. wrapped models and tied weights ---------------------------------------------------------
def _wrappers(model: nn.Module):
    return {
        "compiled": torch.compile(model, backend="eager"),
        "data_parallel": nn.DataParallel(model),
    }


@pytest.mark.parametrize("wrapper", ["compiled", "data_parallel"])
def test_directions_and_state_dicts_of_the_bare_model_fit_a_wrapped_one(wrapper, tmp_path):
    model = make_mlp()
    before = snapshot(model)
    X, y = classification_data()
    directions = lv.random_directions(model, 2, seed=1)
    bare = lv.plane(lv.Objective(model, F.cross_entropy, (X, y)), directions, steps=(3, 3),
                    strategy="loop", progress=False)  # fmt: skip
    wrapped = _wrappers(model)[wrapper]
    obj = lv.Objective(wrapped, F.cross_entropy, (X, y))
    land = lv.plane(obj, directions, steps=(3, 3), strategy="loop", progress=False)
    np.testing.assert_array_equal(land.values["loss"], bare.values["loss"])
    # Directions made on the wrapper are the bare model's under other names; they combine.
    on_wrapper = lv.random_directions(wrapped, 2, seed=1)
    assert {n.split(".", 1)[1] for n in on_wrapper[0]} == set(directions[0])
    assert (on_wrapper[0] - directions[0]).norm() == 0.0
    # direction_between: bare and wrapped, either way round, names of the first model.
    other = make_mlp(seed=3)
    expected = lv.direction_between(model, other)
    assert lv.direction_between(model, _wrappers(other)[wrapper]).fingerprint() == (
        expected.fingerprint()
    )
    back = lv.direction_between(wrapped, other.state_dict())
    assert {n.split(".", 1)[1] for n in back} == set(expected)
    assert math.isclose((back - expected).norm(), 0.0, abs_tol=0.0)
    # A checkpoint of the bare model fills the wrapped one, and a wrapped one's the bare model.
    torch.save(other.state_dict(), tmp_path / "bare.pt")
    filled = _wrappers(make_mlp(seed=7))[wrapper]
    load_checkpoint(filled, tmp_path / "bare.pt")
    assert all(torch.equal(a, b) for a, b in zip(filled.parameters(), other.parameters()))
    torch.save(_wrappers(other)[wrapper].state_dict(), tmp_path / "wrapped.pt")
    plain = load_checkpoint(make_mlp(seed=7), tmp_path / "wrapped.pt")
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), other.parameters()))
    assert_unchanged(model, before)


class TiedLM(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(10, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: named_parameters() lists it once

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.embed(tokens))


def test_direction_between_accepts_the_tied_copy_of_a_state_dict():
    a, b = TiedLM(0), TiedLM(1)
    before = snapshot(a)
    state = b.state_dict()
    assert set(state) == {"embed.weight", "lm_head.weight"}
    for d in (lv.direction_between(a, state), lv.direction_between(state, a)):
        assert set(d) == {"embed.weight"}
        assert torch.equal(d["embed.weight"].abs(), (b.embed.weight - a.embed.weight).abs())
    broken = {k: v.clone() for k, v in state.items()}
    broken["lm_head.weight"] += 1.0
    with pytest.raises(lv.DirectionError, match=r"'lm_head\.weight' is tied to 'embed\.weight'"):
        lv.direction_between(a, broken)
    wrapped = {f"module.{k}": v for k, v in state.items()}  # a DataParallel state dict
    assert set(lv.direction_between(a, wrapped)) == {"embed.weight"}
    assert_unchanged(a, before)


# -- 8. models vmap cannot batch --------------------------------------------------------------
class RecurrentClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def _sequences(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 5, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_vmap_on_an_lstm_is_a_clear_error_and_auto_falls_back_to_the_loop(monkeypatch):
    model = RecurrentClassifier()
    before = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, _sequences())
    directions = lv.random_directions(model, 2, seed=1)
    with pytest.raises(lv.InputError, match=r"strategy='vmap' cannot batch.*strategy='loop'"):
        lv.plane(obj, directions, steps=(3, 3), strategy="vmap", progress=False)
    assert_unchanged(model, before)
    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)  # let the tuner try vmap
    evaluator = PointEvaluator(obj, obj.parameters(), directions)
    coefficients = _grid(80)
    tuned, report = evaluator.run(coefficients, strategy="auto", progress=False)
    assert report.config.strategy == "loop"
    vmap_trials = [t for t in report.trials if t["strategy"] == "vmap"]
    assert vmap_trials and all("cannot batch" in t["error"] for t in vmap_trials)
    plain, _ = evaluator.run(coefficients, config=EngineConfig("loop", None, 1), progress=False)
    np.testing.assert_allclose(tuned["loss"], plain["loss"], rtol=1e-6)
    assert_unchanged(model, before)


def test_bfloat16_planes_are_stored_and_load_with_their_dtype(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.bfloat16)
    X = torch.randn(32, 4).to(torch.bfloat16)
    y = torch.randint(0, 3, (32,))
    obj = lv.Objective(model, nn.functional.cross_entropy, (X, y))
    directions = lv.random_directions(obj, 2, seed=0)
    plane = lv.plane(obj, directions, steps=3, store=tmp_path / "bf16.h5", progress=False)
    loaded = lv.load(tmp_path / "bf16.h5")
    assert loaded == plane
    for ours, theirs in zip(loaded.directions, directions, strict=True):
        for name in theirs:
            assert ours[name].dtype == torch.bfloat16 and torch.equal(ours[name], theirs[name])
    resumed = lv.plane(obj, directions, steps=3, store=tmp_path / "bf16.h5", progress=False)
    np.testing.assert_array_equal(resumed.values["loss"], plane.values["loss"])

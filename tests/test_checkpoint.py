"""Checkpoint loading: the accepted layouts give exactly the saved values; every mismatch is named."""

from __future__ import annotations

import collections
import sys

import pytest
import torch
from torch import nn

from lossvista.checkpoint import load_checkpoint, load_state_dict_file
from lossvista.errors import CheckpointError, InputError


def small_model(hidden: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 2))


def assert_same_state(model: nn.Module, reference: nn.Module) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.fixture
def trained():
    """A model whose parameters and BatchNorm buffers differ from a fresh one."""
    model = small_model(seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(0.5)
        model[1].num_batches_tracked.fill_(7)
    return model


class _Opaque:
    """Not a tensor and not allowed by torch.load(weights_only=True)."""

    def __init__(self) -> None:
        self.value = 3


def test_plain_state_dict_fills_the_model_in_place(tmp_path, trained):
    path = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), path)
    model = small_model(seed=0)
    returned = load_checkpoint(model, path)
    assert returned is model
    assert_same_state(model, trained)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net", "weights"])
def test_state_dict_nested_under_a_usual_key(tmp_path, trained, key):
    path = tmp_path / "nested.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, key: trained.state_dict()}, path)
    model = load_checkpoint(small_model(), path)
    assert_same_state(model, trained)
    assert set(load_state_dict_file(path)) == set(trained.state_dict())


def test_state_dict_is_preferred_over_other_keys(tmp_path, trained):
    other = small_model(seed=5)
    path = tmp_path / "both.pt"
    torch.save({"state_dict": trained.state_dict(), "model": other.state_dict()}, path)
    assert_same_state(load_checkpoint(small_model(), path), trained)


def test_module_prefix_of_data_parallel_is_stripped(tmp_path, trained):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, path)
    assert_same_state(load_checkpoint(small_model(), path), trained)


def test_module_prefix_kept_when_the_model_has_it(tmp_path, trained):
    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.module = inner

    path = tmp_path / "wrapped.pt"
    torch.save(Wrapper(trained).state_dict(), path)
    model = load_checkpoint(Wrapper(small_model()), path)
    assert_same_state(model.module, trained)


def test_missing_and_unexpected_keys_are_named_and_nothing_is_loaded(tmp_path, trained):
    state = collections.OrderedDict(trained.state_dict())
    del state["2.weight"]
    state["head.weight"] = torch.zeros(2, 5)
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert "missing keys" in message and "'2.weight'" in message
    assert "unexpected keys" in message and "'head.weight'" in message
    assert "keys.pt" in message
    for name, value in model.state_dict().items():  # all-or-nothing
        assert torch.equal(value, before[name]), name


def test_non_strict_skips_missing_and_unexpected_keys(tmp_path, trained):
    state = dict(trained.state_dict())
    del state["2.bias"]
    state["extra"] = torch.ones(1)
    path = tmp_path / "loose.pt"
    torch.save(state, path)
    model = small_model()
    fresh_bias = model[2].bias.detach().clone()
    load_checkpoint(model, path, strict=False)
    assert torch.equal(model[2].weight, trained[2].weight)
    assert torch.equal(model[2].bias, fresh_bias)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(small_model(hidden=7).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_model(hidden=5), path, strict=False)  # shapes matter even so
    message = str(info.value)
    assert "0.weight: checkpoint (7, 3) vs model (5, 3)" in message
    assert "2.weight: checkpoint (2, 7) vs model (2, 5)" in message


def test_old_checkpoint_without_num_batches_tracked_loads(tmp_path, trained):
    state = {k: v for k, v in trained.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    model = load_checkpoint(small_model(), path)
    assert torch.equal(model[1].running_mean, trained[1].running_mean)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="is a folder"):
        load_state_dict_file(tmp_path)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("just some text")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*notes\.pt"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([torch.ones(2)], "holds a list, not a state dict"),
        ({"epoch": 3, "lr": 0.1}, "not a state dict: its keys are ['epoch', 'lr']"),
        ({}, "it is empty"),
        ({"state_dict": {"epoch": 1}}, "not a state dict"),
    ],
)
def test_content_that_is_not_a_state_dict(tmp_path, payload, fragment):
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert fragment in str(info.value)


def test_weights_only_refuses_arbitrary_objects_unless_opted_out(tmp_path, trained):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": trained.state_dict(), "extra": _Opaque()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_model(), path)
    message = str(info.value)
    assert "--unsafe-load" in message and "weights_only=False" in message
    assert "trust" in message
    assert "_Opaque" in message  # what torch refused
    model = load_checkpoint(small_model(), path, weights_only=False)
    assert_same_state(model, trained)


def test_unsafe_load_of_a_class_that_cannot_be_imported(tmp_path, trained, monkeypatch):
    path = tmp_path / "gone.pt"
    torch.save({"state_dict": trained.state_dict(), "extra": _Opaque()}, path)
    monkeypatch.delattr(sys.modules[__name__], "_Opaque")
    with pytest.raises(CheckpointError, match="cannot be imported here"):
        load_state_dict_file(path, weights_only=False)


def test_pickled_whole_module_needs_unsafe_load(tmp_path, trained):
    path = tmp_path / "module.pt"
    torch.save(trained, path)
    with pytest.raises(CheckpointError, match="--unsafe-load"):
        load_state_dict_file(path)
    assert_same_state(load_checkpoint(small_model(), path, weights_only=False), trained)


def test_tensors_are_read_onto_the_cpu(tmp_path, trained):
    path = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), path)
    state = load_state_dict_file(path)
    assert all(t.device.type == "cpu" for t in state.values())

"""lv.integrations.LandscapeCallback in real 2-epoch CPU fits: it fires after the configured epochs,
measures the module as it is then (equal to the probe run by hand on the saved weights), logs to
the TensorBoard logger's event file or through log_metrics, leaves training untouched, and needs
Lightning only when it is created."""

from __future__ import annotations

import importlib
import sys
import types
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lossvista as lv
from lossvista.errors import InputError

from ._events import as_stored, events, scalar_series

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import Logger, TensorBoardLogger  # noqa: E402


class TinyModule(pl.LightningModule):
    def __init__(self, with_loss_fn: bool = True):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.2), nn.Linear(6, 3))
        if with_loss_fn:
            self.loss_fn = F.cross_entropy

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(24, 4, generator=g), torch.randint(0, 3, (24,), generator=g)
    train = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True, generator=g)
    return train, DataLoader(TensorDataset(X[:12], y[:12]), batch_size=6)


class Snapshots(pl.Callback):
    """The weights and modes at the end of every epoch (placed before and after the landscape
    callback)."""

    def __init__(self):
        self.states, self.modes = [], []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append({k: v.clone() for k, v in pl_module.state_dict().items()})
        self.modes.append([m.training for m in pl_module.modules()])


def fit(tmp_path, callback, *, logger=None, val=True, epochs=2, seed=0):
    torch.manual_seed(seed)
    module = TinyModule()
    train, val_loader = loaders()
    snapshots, after = Snapshots(), Snapshots()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path)) if logger is None else logger,
        callbacks=[snapshots, *([callback] if callback is not None else []), after],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and small batches
        trainer.fit(module, train, val_loader if val else None)
    # the callback left the module as it found it: weights and buffers, train mode
    for before, later in zip(snapshots.states, after.states):
        assert all(torch.equal(value, later[name]) for name, value in before.items())
    assert snapshots.modes == after.modes
    assert all(all(modes) for modes in after.modes)
    return trainer, module, snapshots


OPTIONS = dict(plane=dict(steps=3), sharpness=dict(samples=2), progress=False)


def test_fires_every_epoch_and_logs_to_tensorboard(tmp_path):
    callback = lv.integrations.LandscapeCallback(every_n_epochs=1, **OPTIONS)
    assert isinstance(callback, pl.Callback)
    trainer, _, snapshots = fit(tmp_path, callback)
    assert callback.epochs_ == [1, 2]
    acc = events(trainer.logger.log_dir)
    steps = [3, 6]  # 24 samples in batches of 8: 3 steps per epoch
    lambdas = scalar_series(acc, "lossvista/lambda_max")
    assert [s for s, _ in lambdas] == steps
    assert [s for s, _ in scalar_series(acc, "lossvista/center_loss")] == steps
    assert [e.step for e in acc.Images("lossvista/landscape")] == steps
    # the last measurement is the probe's on the weights at the end of epoch 2, validation data
    _, val_loader = loaders()
    final = TinyModule()
    final.load_state_dict(snapshots.states[-1])
    again = lv.LandscapeProbe(
        lv.Objective(final, F.cross_entropy, val_loader), every=1, **OPTIONS
    ).run(6)
    assert callback.results_.eigen == again.eigen
    assert callback.results_.plane == again.plane
    assert lambdas[-1][1] == as_stored(again.lambda_max)
    assert scalar_series(acc, "lossvista/sharpness")[-1] == (6, as_stored(again.sharpness.value))


def test_every_second_epoch_with_given_data_and_untouched_training(tmp_path):
    X, y = torch.randn(10, 4, generator=torch.Generator().manual_seed(5)), torch.arange(10) % 3
    callback = lv.integrations.LandscapeCallback(
        every_n_epochs=2, loss_fn=F.cross_entropy, data=(X, y), curvature=None, **OPTIONS
    )
    logger = MemoryLogger()
    _, module, _ = fit(tmp_path, callback, logger=logger, val=False)
    assert callback.epochs_ == [2]
    assert callback.results_.eigen is None
    probed = [(step, m) for step, m in logger.logged if "lossvista/center_loss" in m]
    assert probed == [(6, lv._tensorboard.scalars(callback.results_))]
    assert probed[0][1]["lossvista/center_loss"] == callback.results_.plane.center["loss"]
    _, plain, _ = fit(tmp_path / "plain", None, logger=MemoryLogger(), val=False)
    for name, value in plain.state_dict().items():
        assert torch.equal(value, module.state_dict()[name]), name


class MemoryLogger(Logger):
    """A logger without TensorBoard: it keeps what log_metrics receives."""

    def __init__(self):
        super().__init__()
        self.logged = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def test_objective_factory_and_missing_loss_or_data(tmp_path):
    built = []

    def objective(module):
        built.append(module)
        return lv.Objective(module, F.cross_entropy, (torch.zeros(4, 4), torch.zeros(4).long()))

    callback = lv.integrations.LandscapeCallback(2, objective=objective, **OPTIONS)
    fit(tmp_path / "a", callback, val=False)
    assert callback.epochs_ == [2] and len(built) == 1 and isinstance(built[0], TinyModule)

    no_data = lv.integrations.LandscapeCallback(1, **OPTIONS)
    with pytest.raises(InputError, match="has no data: pass data="):
        fit(tmp_path / "b", no_data, val=False, epochs=1)

    class NoLoss(TinyModule):
        def __init__(self):
            super().__init__(with_loss_fn=False)

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False)
    with pytest.raises(InputError, match="no loss function for NoLoss: pass loss_fn="):
        lv.integrations.LandscapeCallback(1, **OPTIONS).setup(trainer, NoLoss(), "fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(every_n_epochs=0), "every_n_epochs must be a positive integer"),
        (dict(objective=3), "objective must be a callable"),
        (dict(objective=lambda m: m, loss_fn=F.mse_loss), "either objective= or loss_fn="),
        (dict(loss_fn="mse"), "loss_fn must be callable"),
        (dict(plane=dict(steps=1)), "steps must be an integer >= 2"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        lv.integrations.LandscapeCallback(**kwargs)


def test_lightning_is_needed_only_to_create_the_callback(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(lv, "integrations", lv.integrations)  # the import below rebinds it
    for name in ("lossvista.integrations", "lossvista.integrations.lightning"):
        monkeypatch.delitem(sys.modules, name)
    integrations = importlib.import_module("lossvista.integrations")
    with pytest.raises(lv.MissingDependencyError, match=r"pip install 'lossvista\[lightning\]'"):
        integrations.LandscapeCallback(1)


def test_pytorch_lightning_when_only_it_is_there(monkeypatch):
    pytorch_lightning = pytest.importorskip("pytorch_lightning")
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    callback = lv.integrations.LandscapeCallback(1)
    assert isinstance(callback, pytorch_lightning.Callback)
    assert isinstance(callback, lv.integrations.LandscapeCallback)
    assert not isinstance(callback, pl.Callback)


def test_rank_zeros_share_of_a_distributed_validation_loader_is_named():
    # Under DDP Lightning gives every rank a DistributedSampler: the callback on rank 0 would
    # measure 1/N of the validation set, so it says so (and data= measures all of it).
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from lossvista.integrations.lightning import _validation_data

    dataset = TensorDataset(torch.randn(10, 3), torch.randn(10, 1))
    shared = DataLoader(dataset, sampler=DistributedSampler(dataset, num_replicas=2, rank=0))
    trainer = types.SimpleNamespace(val_dataloaders=shared)
    with pytest.warns(lv.LossvistaWarning, match="1 of 2 parts"):
        assert _validation_data(trainer) is shared
    whole = types.SimpleNamespace(val_dataloaders=[DataLoader(dataset, batch_size=4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _validation_data(whole) is whole.val_dataloaders[0]

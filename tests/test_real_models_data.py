"""Real models and their data: token-weighted losses, outputs that are not tensors, dict batches.

Everything is plain torch (no downloads): a tiny causal language model on
``F.scaled_dot_product_attention`` over length-varying sequences whose padded targets are -100,
as a HuggingFace collator makes them. This file is also named by the command-line tests as
``tests/test_real_models_data.py:make_lm`` (and friends), so its factories take keyword
arguments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import lossvista as lv
from lossvista.cli import main
from lossvista.curvature import hessian_eigs
from lossvista.engine import EngineConfig, PointEvaluator
from lossvista.errors import DataError, InputError

HERE = Path(__file__).resolve()
VOCAB, PAD = 11, 0


# -- a tiny causal language model and its data -------------------------------------------------------
class TinyLM(nn.Module):
    """Embedding, one causal self-attention block on F.scaled_dot_product_attention, a head."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, heads: int = 2, output: str = "tensor"):
        super().__init__()
        self.heads, self.output = heads, output
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        x = self.embed(input_ids)
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # padding sits at the end
        logits = self.head(x + y.transpose(1, 2).reshape(b, t, d))
        if self.output == "dict":
            return {"logits": logits, "hidden": x}
        if self.output == "dataclass":
            return LMOutput(logits=logits, hidden=x, aux_loss=logits.new_zeros(()))
        return logits


@dataclasses.dataclass
class LMOutput:
    """Like a HuggingFace ModelOutput: a dataclass with logits, a per-sample and a scalar field."""

    logits: torch.Tensor
    hidden: torch.Tensor
    aux_loss: torch.Tensor


def make_lm(
    dim: int = 8, output: str = "tensor", dtype: str = "float64", frozen: bool = False
) -> TinyLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = TinyLM(dim=dim, output=output).to(getattr(torch, dtype))
    model.embed.requires_grad_(not frozen)  # frozen=True: an embedding kept out of the slice
    return model


def lm_loss(output, target: torch.Tensor) -> torch.Tensor:
    """Token-level cross-entropy, averaged over the target entries that are not -100."""
    logits = output if isinstance(output, torch.Tensor) else output["logits"]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def lm_loss_of_logits(output, target: torch.Tensor) -> torch.Tensor:
    """The same, written for a HuggingFace-style output: reads ``.logits``."""
    return F.cross_entropy(output.logits.reshape(-1, VOCAB), target.reshape(-1))


def sequences(n: int = 23, low: int = 1, high: int = 9, seed: int = 0) -> list[torch.Tensor]:
    """Token sequences of random lengths in [low, high] (one-token ones have no target)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=g)
    return [torch.randint(1, VOCAB, (int(n_),), generator=g) for n_ in lengths]


def collate(seqs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """A HuggingFace-style causal-LM collator: pad to the batch's longest, targets -100 there.

    ``labels[t]`` is the next token ``input_ids[t + 1]``; the last real position and the padding
    have no target (-100).
    """
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), PAD)
    labels = torch.full((len(seqs), length), -100)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
        labels[i, : len(s) - 1] = s[1:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_lm_data(n: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole set padded to one length: ``(input_ids, labels)``."""
    batch = collate(sequences(n))
    return batch["input_ids"], batch["labels"]


def make_lm_loader(batch_size: int = 4) -> DataLoader:
    return DataLoader(sequences(), batch_size=batch_size, collate_fn=collate)  # type: ignore[arg-type]


def token_mean(model: nn.Module, seqs: list[torch.Tensor]) -> float:
    """The oracle: every target token of the set, one sequence at a time, summed in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            if len(s) < 2:
                continue
            logits = model(s[None, :-1])
            logits = logits if isinstance(logits, torch.Tensor) else logits["logits"]
            total += float(F.cross_entropy(logits[0].double(), s[1:], reduction="sum"))
            count += len(s) - 1
    return total / count


def objective(data=None, **kwargs) -> lv.Objective:
    return lv.Objective(
        kwargs.pop("model", None) or make_lm(), lm_loss, data or make_lm_data(), **kwargs
    )


# -- 1. losses averaged over tokens ------------------------------------------------------------------
def test_token_count_gives_the_token_mean_for_every_batch_size():
    model = make_lm()
    truth = token_mean(model, sequences())
    assert min(len(s) for s in sequences()) == 1  # a sequence without targets is in the set
    for batch_size in (1, 3, None):
        value = objective(model=model, count="tokens", batch_size=batch_size).loss()
        assert value == pytest.approx(truth, rel=1e-12), batch_size
    for size in (1, 4, 23):  # a loader padding each batch to its own length
        value = objective(make_lm_loader(size), model=model, count="tokens").loss()
        assert value == pytest.approx(truth, rel=1e-12), size


def test_engine_batch_sizes_and_strategies_cannot_change_a_token_mean(monkeypatch):
    from lossvista import _tuning

    monkeypatch.setattr(_tuning, "TUNE_BUDGET", 10.0)  # let every candidate run
    model = make_lm()
    obj = objective(model=model, count="tokens")
    dirs = lv.random_directions(model, 2, seed=1)
    points = np.random.default_rng(0).uniform(-1, 1, size=(6, 2))
    evaluator = PointEvaluator(obj, obj.parameters(), dirs)
    reference, _ = evaluator.run(points, config=EngineConfig("loop", None, 1), progress=False)
    for config in (
        EngineConfig("loop", 1, 1),
        EngineConfig("loop", 3, 1),
        EngineConfig("vmap", 3, 4),
        EngineConfig("vmap", 7, 6),
    ):
        values, _ = evaluator.run(points, config=config, progress=False)
        np.testing.assert_allclose(
            values["loss"], reference["loss"], rtol=1e-12, err_msg=str(config)
        )
    tuned = lv.plane(obj, dirs, steps=5, progress=False)
    loop = lv.plane(obj, dirs, steps=5, strategy="loop", progress=False)
    np.testing.assert_allclose(tuned.values["loss"], loop.values["loss"], rtol=1e-12)
    assert tuned.values["loss"][2, 2] == pytest.approx(token_mean(model, sequences()), rel=1e-12)
    assert tuned.center["loss"] == pytest.approx(token_mean(model, sequences()), rel=1e-12)


def _sorted_sequences() -> list[torch.Tensor]:
    """Length-sorted (as LM data often are): the first eight sequences all have 3 tokens."""
    seqs = sorted(sequences(n=24, low=4, high=9, seed=1), key=len)
    g = torch.Generator().manual_seed(2)
    return [torch.randint(1, VOCAB, (3,), generator=g) for _ in range(8)] + seqs[8:]


def test_default_count_weights_sequences_the_pitfall_count_tokens_fixes():
    """With the default count a token-mean loss is averaged per sequence within a batch: its
    value is not the token mean and depends on the batch size. The first-batch check only sees
    it when the first batch's halves hold different numbers of tokens."""
    model, seqs = make_lm(), _sorted_sequences()
    batch = collate(seqs)
    data = (batch["input_ids"], batch["labels"])
    truth = token_mean(model, seqs)
    by_samples = {b: objective(data, model=model, batch_size=b).loss() for b in (4, 8)}
    assert abs(by_samples[4] - truth) > 1e-3 * truth and abs(by_samples[8] - truth) > 1e-3 * truth
    assert abs(by_samples[4] - by_samples[8]) > 1e-4 * truth
    by_tokens = {
        b: objective(data, model=model, count="tokens", batch_size=b).loss() for b in (4, 8)
    }
    assert by_tokens[4] == pytest.approx(truth, rel=1e-12)
    assert by_tokens[8] == pytest.approx(truth, rel=1e-12)
    # A first batch of mixed lengths: the check refuses the per-sample weighting and names the fix.
    with pytest.raises(InputError, match=r"not a mean over the samples.*count='tokens'"):
        objective(data, model=model, batch_size=24).loss()


def hf_collate(seqs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """HuggingFace's causal-LM convention: labels are the inputs (-100 on padding), shifted by
    the loss."""
    batch = collate(seqs)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}


def shifted_loss(output, target: torch.Tensor) -> torch.Tensor:
    logits = output if isinstance(output, torch.Tensor) else output.logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1))


def shifted_tokens(output, target: torch.Tensor) -> torch.Tensor:
    return (target[:, 1:] != -100).sum()


def test_labels_shifted_by_the_loss_need_the_count_of_shifted_targets():
    model = make_lm()
    truth = token_mean(model, sequences())
    for size in (1, 4, 23):
        loader = DataLoader(sequences(), batch_size=size, collate_fn=hf_collate)  # type: ignore[arg-type]
        exact = lv.Objective(model, shifted_loss, loader, count=shifted_tokens)
        assert exact.loss() == pytest.approx(truth, rel=1e-12), size
    # count="tokens" also counts the first position, which no loss term uses: not exact
    loader = DataLoader(sequences(), batch_size=4, collate_fn=hf_collate)  # type: ignore[arg-type]
    overcounted = lv.Objective(model, shifted_loss, loader, count="tokens").loss()
    assert abs(overcounted - truth) > 1e-4 * truth


def test_gpt2_token_mean_equals_the_models_own_loss():
    """A HuggingFace GPT-2 from a tiny config (no download), when transformers is installed."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=8, n_layer=1, n_head=2
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # the model's own loss over the whole set in one batch
        own = float(model(**hf_collate(sequences())).loss)
    loader = DataLoader(sequences(), batch_size=4, collate_fn=hf_collate)  # type: ignore[arg-type]
    obj = lv.Objective(model, shifted_loss, loader, count=shifted_tokens)
    assert obj.loss() == pytest.approx(own, rel=1e-5)


def test_first_batch_check_weights_halves_by_their_token_counts():
    model = make_lm()
    objective(model=model, count="tokens", batch_size=23).loss()  # a token mean passes

    def token_sum(output, target):
        return F.cross_entropy(output.reshape(-1, VOCAB), target.reshape(-1), reduction="sum")

    with pytest.raises(InputError, match=r"not a mean over the tokens.*like a sum"):
        lv.Objective(model, token_sum, make_lm_data(), count="tokens").loss()


def test_count_callables_and_their_errors():
    model = make_lm()
    truth = token_mean(model, sequences())
    as_tensor = objective(model=model, count=lambda out, y: (y != -100).sum()).loss()
    as_int = objective(model=model, count=lambda out, y: int((y != -100).sum()), batch_size=5)
    assert as_tensor == pytest.approx(truth, rel=1e-12)
    assert as_int.loss() == pytest.approx(truth, rel=1e-12)
    assert objective(model=model, count="tokens").settings()["count"] == "tokens"
    assert as_int.settings()["count"].startswith("test_real_models_data.")  # an identity

    # Pixels: a masked mean-squared error over the entries marked valid (y >= 0).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, dtype=torch.float64, generator=g)
    y = torch.randn(30, 4, dtype=torch.float64, generator=g).abs()
    y[torch.rand(30, 4, generator=g) < 0.4] = -1.0  # missing entries
    net = nn.Linear(5, 4).double()

    def masked_mse(out, target):
        keep = target >= 0
        return ((out - target)[keep] ** 2).mean()

    with torch.no_grad():
        keep = y >= 0
        oracle = float(((net(x) - y)[keep] ** 2).sum() / keep.sum())
    for batch_size in (1, 7, None):
        pixels = lv.Objective(
            net, masked_mse, (x, y), count=lambda o, t: (t >= 0).sum(), batch_size=batch_size
        )
        assert pixels.loss() == pytest.approx(oracle, rel=1e-12)

    for bad, fragment in (
        (lambda o, t: torch.ones(3), "returned float32 \\(3,\\)"),
        (lambda o, t: -1, "not negative"),
    ):
        with pytest.raises(InputError, match=fragment):
            objective(model=model, count=bad).loss()
    with pytest.raises(InputError, match="count must be 'samples', 'tokens' or a callable"):
        objective(model=model, count="pixels")
    with pytest.raises(InputError, match="count='tokens' counts the entries of an integer target"):
        lv.Objective(net, masked_mse, (x, y), count="tokens").loss()


def test_batches_without_tokens_add_nothing_and_data_without_tokens_is_refused():
    model = make_lm()
    seqs = sequences()
    truth = token_mean(model, seqs)
    empty = [torch.tensor([5]), torch.tensor([7])]  # one token each: nothing to predict
    loader = DataLoader(empty + seqs, batch_size=2, collate_fn=collate)  # type: ignore[arg-type]
    obj = objective(loader, model=model, count="tokens")
    assert obj.loss() == pytest.approx(truth, rel=1e-12)
    # Gradients and curvature skip the empty batch too (its NaN mean would poison them).
    eigs = hessian_eigs(obj, 1)
    reference = hessian_eigs(objective(model=model, count="tokens"), 1)
    assert np.isfinite(eigs.values).all()
    np.testing.assert_allclose(eigs.values, reference.values, rtol=1e-8)
    with pytest.raises(DataError, match=r"no tokens to average.*-100"):
        objective(
            DataLoader(empty, batch_size=2, collate_fn=collate), model=model, count="tokens"
        ).loss()


def test_subset_standard_error_covers_the_full_token_mean_at_the_nominal_rate():
    """The ratio estimator's standard error (a subset of sequences, a token mean) is calibrated:
    over seeded subsets, |value - full-data token mean| <= 1.96 stderr in about 95% of draws."""
    model = make_lm(dim=4)
    seqs = sequences(n=400, low=2, high=16, seed=5)
    batch = collate(seqs)
    data = (batch["input_ids"], batch["labels"])
    truth = objective(data, model=model, count="tokens").loss()
    assert truth == pytest.approx(token_mean(model, seqs), rel=1e-12)
    z = []
    for seed in range(300):
        values = objective(data, model=model, count="tokens", subset=40, seed=seed).evaluate()
        z.append((values["loss"] - truth) / values["loss_stderr"])
    z = np.asarray(z)
    coverage = float(np.mean(np.abs(z) <= 1.96))
    # 300 draws: the binomial standard deviation of the coverage is 0.013.
    assert 0.91 <= coverage <= 0.99, coverage
    assert 0.85 <= float(np.std(z)) <= 1.15, np.std(z)


def test_subset_standard_error_with_one_item_per_sample_is_the_sample_mean_formula():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(50, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 2, (50,), generator=g),
    )
    net = nn.Linear(3, 2).double()
    values = lv.Objective(net, F.cross_entropy, (x, y), subset=20, seed=4).evaluate()
    index = torch.randperm(50, generator=torch.Generator().manual_seed(4))[:20].sort().values
    with torch.no_grad():
        losses = F.cross_entropy(net(x[index]), y[index], reduction="none").numpy()
    expected = np.sqrt(losses.var(ddof=1) / 20 * (1 - 20 / 50))
    assert values["loss_stderr"] == pytest.approx(expected, rel=1e-10)


# -- 2. model outputs that are not tensors -----------------------------------------------------------
@pytest.mark.parametrize("output", ["dict", "dataclass"])
def test_outputs_that_are_not_tensors_under_subset_and_accuracy(output):
    plain = objective(model=make_lm(), count="tokens", subset=10, seed=2, metrics=["accuracy"])
    loss = lm_loss if output == "dict" else lm_loss_of_logits
    wrapped = lv.Objective(
        make_lm(output=output), loss, make_lm_data(), count="tokens", subset=10, seed=2,
        metrics=["accuracy"],
    )  # fmt: skip
    expected, values = plain.evaluate(), wrapped.evaluate()
    assert set(values) == {"loss", "accuracy", "loss_stderr", "accuracy_stderr"}
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, rel=1e-12), name
    # accuracy is a token accuracy: -100 targets are left out
    model = make_lm()
    ids, labels = make_lm_data()
    with torch.no_grad():
        predicted = model(ids).argmax(-1)
    kept = labels != -100
    oracle = float((predicted == labels)[kept].double().mean())
    full = objective(model=model, count="tokens", metrics=["accuracy"]).evaluate()
    assert full["accuracy"] == pytest.approx(oracle, rel=1e-12)


def test_slicing_an_output_keeps_its_type():
    from lossvista._nested import slice_output

    out = LMOutput(logits=torch.zeros(4, 3, 5), hidden=torch.ones(4, 2), aux_loss=torch.tensor(1.0))
    part = slice_output(out, slice(1, 3), 4)
    assert isinstance(part, LMOutput) and part.logits.shape == (2, 3, 5)
    assert part.aux_loss.shape == ()  # not per sample: kept whole
    mapping = slice_output({"logits": torch.zeros(4, 2), "past": (torch.zeros(4, 1),)}, [0], 4)
    assert type(mapping) is dict and mapping["logits"].shape == (1, 2)
    assert mapping["past"][0].shape == (1, 1)


# -- 3. batches that are dicts -----------------------------------------------------------------------
def test_dict_batches_from_a_collating_loader_everywhere():
    model = make_lm()
    truth = token_mean(model, sequences())
    loader = make_lm_loader(4)
    assert set(next(iter(loader))) == {"input_ids", "attention_mask", "labels"}
    obj = objective(loader, model=model, count="tokens")
    assert obj.loss() == pytest.approx(truth, rel=1e-12)
    # The functional view (torch.func.functional_call with keyword inputs): curvature agrees.
    tensors = objective(model=model, count="tokens")
    np.testing.assert_allclose(
        hessian_eigs(obj, 2).values, hessian_eigs(tensors, 2).values, rtol=1e-8
    )
    v = {n: torch.randn_like(p) for n, p in tensors.parameters().items()}
    hv_dict, hv_tensor = lv.hvp(obj, v), lv.hvp(tensors, v)
    for name in v:
        torch.testing.assert_close(hv_dict[name], hv_tensor[name], rtol=1e-9, atol=1e-12)
    # subset= on a loader of padded batches of different lengths: same samples, same values
    dict_subset = objective(make_lm_loader(4), model=model, count="tokens", subset=9, seed=1)
    tensor_subset = objective(model=model, count="tokens", subset=9, seed=1)
    for name, value in tensor_subset.evaluate().items():
        assert dict_subset.evaluate()[name] == pytest.approx(value, rel=1e-12), name
    # a dict holding the whole data set: tensor data, so vmap may evaluate many points at once
    whole = collate(sequences())
    obj_whole = objective(whole, model=model, count="tokens")
    evaluator = PointEvaluator(obj_whole, obj_whole.parameters(), lv.random_directions(model, 2))
    points = np.array([[0.0, 0.0], [0.3, -0.2], [-0.5, 0.1]])
    vmapped, _ = evaluator.run(points, config=EngineConfig("vmap", 5, 3), progress=False)
    looped, _ = evaluator.run(points, config=EngineConfig("loop", 2, 1), progress=False)
    np.testing.assert_allclose(vmapped["loss"], looped["loss"], rtol=1e-12)
    assert vmapped["loss"][0] == pytest.approx(truth, rel=1e-12)


def test_dict_batches_find_the_target_and_unpack_handles_the_rest():
    model = make_lm()
    truth = token_mean(model, sequences())
    ids, labels = make_lm_data()
    for key in ("label", "target", "y"):
        assert objective({"input_ids": ids, key: labels}, model=model, count="tokens").loss() == (
            pytest.approx(truth, rel=1e-12)
        )
    with pytest.raises(DataError, match=r"none of \['labels', 'label', 'target', 'y'\].*unpack="):
        objective([{"input_ids": ids, "answer": labels}], model=model).loss()

    # Any other structure: (target, (inputs, extra)) batches, unpacked by a hook.
    batches = [(labels[i : i + 5], (ids[i : i + 5], "unused")) for i in range(0, 23, 5)]
    obj = objective(
        batches, model=model, count="tokens", unpack=lambda b: ({"input_ids": b[1][0]}, b[0])
    )
    assert obj.loss() == pytest.approx(truth, rel=1e-12)
    as_tuple = objective(batches, model=model, count="tokens", unpack=lambda b: ((b[1][0],), b[0]))
    assert as_tuple.loss() == pytest.approx(truth, rel=1e-12)
    with pytest.raises(DataError, match=r"unpack=.*must return a pair"):
        objective(batches, model=model, unpack=lambda b: b[1][0]).loss()
    with pytest.raises(InputError, match="unpack must be a callable"):
        objective(model=model, unpack="labels")


# -- 5. the command line ---------------------------------------------------------------------------
MODEL, DATA = f"{HERE}:make_lm", f"{HERE}:make_lm_data"
LOSS = f"{HERE}:lm_loss"


def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    if code:
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    return result


def test_cli_count_tokens_gives_the_token_mean(tmp_path):
    common = ("line", "--model", MODEL, "--data", DATA, "--loss", LOSS, "--metric", "none",
              "--steps", 3, "--device", "cpu", "--quiet")  # fmt: skip
    cli(*common, "--count", "tokens", "--out", tmp_path / "tokens.h5", "--no-png")
    line = lv.load(tmp_path / "tokens.h5")
    truth = token_mean(make_lm(), sequences())
    assert line.center["loss"] == pytest.approx(truth, rel=1e-12)
    assert line.settings["objective"]["count"] == "tokens"
    # The default count on padded token targets: the first-batch check refuses it, naming the fix.
    refused = cli(*common, "--out", tmp_path / "samples.h5", "--batch-size", 23, code=1)
    assert "count='tokens'" in " ".join(refused.output.split())
    assert "--count [samples|tokens]" in cli("line", "--help").output


def test_cli_model_kwargs(tmp_path):
    common = ("--data", DATA, "--loss", LOSS, "--count", "tokens", "--top-k", 1,
              "--no-critical", "--device", "cpu")  # fmt: skip
    out = tmp_path / "small"
    cli(
        "hessian",
        "--model",
        MODEL,
        "--model-kwargs",
        "dim=4,output='tensor'",
        *common,
        "--out",
        out,
    )
    summary = json.loads((out / "hessian.json").read_text())
    assert summary["settings"]["model_kwargs"] == {"dim": 4, "output": "tensor"}
    reference = hessian_eigs(objective(model=make_lm(dim=4), count="tokens"), 1)
    np.testing.assert_allclose(summary["eigenvalues"], reference.values, rtol=1e-6)
    wrong = cli(
        "hessian", "--model", MODEL, "--model-kwargs", "width=4", *common, "--out", out, code=2
    )
    assert "--model-kwargs" in wrong.output and "width" in wrong.output
    bad = cli(
        "hessian", "--model", MODEL, "--model-kwargs", "dim=4,8", *common, "--out", out, code=2
    )
    assert "name=value" in bad.output
    bare = cli("hessian", "--model", MODEL, "--model-kwargs", "output=dict", *common, "--out", out)
    assert bare.exit_code == 0  # a bare word is a string (the loss reads out["logits"])


def test_cli_params_default_to_the_trainable_ones_and_all_takes_every_one(tmp_path):
    common = ("hessian", "--model", MODEL, "--model-kwargs", "frozen=True", "--data", DATA,
              "--loss", LOSS, "--count", "tokens", "--top-k", 1, "--no-critical", "--device",
              "cpu", "--quiet")  # fmt: skip
    cli(*common, "--out", tmp_path / "trainable")
    cli(*common, "--params", "all", "--out", tmp_path / "all")
    trainable = json.loads((tmp_path / "trainable" / "hessian.json").read_text())
    every = json.loads((tmp_path / "all" / "hessian.json").read_text())
    assert trainable["settings"]["objective"]["param_selection"] == "trainable"
    assert "embed.weight" not in trainable["settings"]["objective"]["params"]
    assert every["settings"]["objective"]["param_selection"] == "all"
    assert "embed.weight" in every["settings"]["objective"]["params"]


def test_cli_hessian_skips_the_critical_point_and_says_what_did_not_converge(tmp_path):
    common = ("hessian", "--model", MODEL, "--data", DATA, "--loss", LOSS, "--count", "tokens",
              "--device", "cpu")  # fmt: skip
    full = cli(*common, "--top-k", 1, "--out", tmp_path / "full")
    skipped = cli(*common, "--top-k", 1, "--no-critical", "--out", tmp_path / "skip")
    with_verdict = json.loads((tmp_path / "full" / "hessian.json").read_text())
    without = json.loads((tmp_path / "skip" / "hessian.json").read_text())
    assert "critical point:" in full.output and "critical point:" not in skipped.output
    assert without["critical_point"] is None and without["n_hvp"]["critical_point"] is None
    assert with_verdict["n_hvp"]["critical_point"] > 0
    assert without["n_hvp"]["total"] < with_verdict["n_hvp"]["total"]
    assert without["eigenvalues"] == with_verdict["eigenvalues"]
    assert without["all_converged"] is True and without["settings"]["critical"] is False

    stuck = cli(*common, "--top-k", 3, "--max-iter", 3, "--quiet", "--out", tmp_path / "stuck")
    summary = json.loads((tmp_path / "stuck" / "hessian.json").read_text())
    assert summary["all_converged"] is False and False in summary["converged"]
    assert (
        "did NOT converge" in stuck.stderr and 'marks them false under "converged"' in stuck.stderr
    )
    assert "provisional" in stuck.stderr  # the verdict's solve did not converge either


def test_cli_output_that_is_not_a_tensor_names_the_loss_option(tmp_path):
    result = cli("line", "--model", MODEL, "--model-kwargs", "output='dataclass'", "--data", DATA,
                 "--out", tmp_path / "x.h5", "--device", "cpu", "--quiet", code=2)  # fmt: skip
    text = " ".join(result.output.split())
    assert "--loss" in text and "returns a LMOutput, not a tensor" in text and ".logits" in text


def test_cli_sharpness_prints_without_out(tmp_path):
    result = cli("sharpness", "--model", MODEL, "--data", DATA, "--loss", LOSS, "--count",
                 "tokens", "--kind", "hessian", "--rho", 0.1, "--device", "cpu")  # fmt: skip
    assert "hessian sharpness (loss increase):" in result.output and "wrote" not in result.output

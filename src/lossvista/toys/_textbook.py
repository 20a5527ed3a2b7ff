"""The optimizers' update rules written out in numpy, with PyTorch's exact conventions.

Each rule keeps its state (momentum buffers, running averages, the step count ``t``) on the
instance and maps ``(x, g)`` (the point and the gradient at it) to the next point. The formulas
follow the pseudo-code in the ``torch.optim`` documentation and the single-tensor code paths of
PyTorch 2.x; ``tests/toys/test_optimizers.py`` checks every rule against ``torch.optim`` step for
step to 1e-10 in float64. Defaults equal ``torch.optim``'s.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SGDRule:
    """``torch.optim.SGD``: gradient descent, heavy-ball momentum and Nesterov momentum.

    ``g <- g + weight_decay * x``; with momentum ``b <- g`` at the first step and
    ``b <- momentum * b + (1 - dampening) * g`` after; ``g <- g + momentum * b`` (Nesterov) or
    ``g <- b``; then ``x <- x - lr * g``. PyTorch's buffer is not scaled by ``1 - momentum``, so
    the effective step is ``lr / (1 - momentum)`` on a long straight slope (Sutskever et al.,
    2013, written with the look-ahead folded into the gradient).
    """

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    buffer: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _non_negative(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = g + self.weight_decay * x
        if self.momentum != 0:
            if self.buffer is None:
                self.buffer = g.copy()
            else:
                self.buffer = self.momentum * self.buffer + (1 - self.dampening) * g
            g = g + self.momentum * self.buffer if self.nesterov else self.buffer
        return x - self.lr * g


@dataclasses.dataclass
class RMSpropRule:
    """``torch.optim.RMSprop`` (Hinton's lecture 6e; centred form after Graves, 2013).

    ``g <- g + weight_decay * x``; ``v <- alpha * v + (1 - alpha) * g^2``; centred:
    ``m <- alpha * m + (1 - alpha) * g`` and ``d = sqrt(v - m^2) + eps``, else
    ``d = sqrt(v) + eps`` (eps outside the root); with momentum ``b <- momentum * b + g / d``
    and ``x <- x - lr * b``, else ``x <- x - lr * g / d``.
    """

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    square_avg: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)
    grad_avg: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)
    buffer: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _non_negative(
            lr=self.lr,
            alpha=self.alpha,
            eps=self.eps,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
        )

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.square_avg is None or self.grad_avg is None or self.buffer is None:
            self.square_avg, self.grad_avg, self.buffer = (np.zeros_like(x) for _ in range(3))
        g = g + self.weight_decay * x
        self.square_avg = self.alpha * self.square_avg + (1 - self.alpha) * g * g
        if self.centered:
            self.grad_avg = self.alpha * self.grad_avg + (1 - self.alpha) * g
            denominator = np.sqrt(self.square_avg - self.grad_avg**2) + self.eps
        else:
            denominator = np.sqrt(self.square_avg) + self.eps
        if self.momentum > 0:
            self.buffer = self.momentum * self.buffer + g / denominator
            return x - self.lr * self.buffer
        return x - self.lr * g / denominator


@dataclasses.dataclass
class AdagradRule:
    """``torch.optim.Adagrad`` (Duchi et al., 2011).

    At step ``t = 1, 2, ...``: ``g <- g + weight_decay * x``;
    ``lr_t = lr / (1 + (t - 1) * lr_decay)``; ``s <- s + g^2`` (``s`` starts at
    ``initial_accumulator_value``); ``x <- x - lr_t * g / (sqrt(s) + eps)``.
    """

    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10
    t: int = dataclasses.field(default=0, init=False)
    sum_squares: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _non_negative(
            lr=self.lr,
            lr_decay=self.lr_decay,
            weight_decay=self.weight_decay,
            initial_accumulator_value=self.initial_accumulator_value,
            eps=self.eps,
        )

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.sum_squares is None:
            self.sum_squares = np.full_like(x, self.initial_accumulator_value)
        self.t += 1
        g = g + self.weight_decay * x
        lr_t = self.lr / (1 + (self.t - 1) * self.lr_decay)
        self.sum_squares = self.sum_squares + g * g
        return x - lr_t * g / (np.sqrt(self.sum_squares) + self.eps)


@dataclasses.dataclass
class AdamRule:
    """``torch.optim.Adam`` (Kingma & Ba, 2015) and, with ``decoupled``, ``AdamW``.

    At step ``t = 1, 2, ...``: decoupled weight decay ``x <- x * (1 - lr * weight_decay)``
    (AdamW, Loshchilov & Hutter, 2019) or L2 ``g <- g + weight_decay * x`` (Adam);
    ``m <- beta1 * m + (1 - beta1) * g``; ``v <- beta2 * v + (1 - beta2) * g^2``;
    with ``amsgrad`` ``v_max <- max(v_max, v)`` replaces ``v`` below;
    ``x <- x - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`` (eps added after
    the bias correction of ``v``, as PyTorch does).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    decoupled: bool = False
    t: int = dataclasses.field(default=0, init=False)
    exp_avg: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)
    exp_avg_sq: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)
    max_exp_avg_sq: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _non_negative(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"Invalid betas: {self.betas} (each in [0, 1))")

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.exp_avg is None or self.exp_avg_sq is None or self.max_exp_avg_sq is None:
            self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq = (
                np.zeros_like(x) for _ in range(3)
            )
        beta1, beta2 = self.betas
        self.t += 1
        if self.decoupled:
            x = x * (1 - self.lr * self.weight_decay)
        else:
            g = g + self.weight_decay * x
        self.exp_avg = beta1 * self.exp_avg + (1 - beta1) * g
        self.exp_avg_sq = beta2 * self.exp_avg_sq + (1 - beta2) * g * g
        second = self.exp_avg_sq
        if self.amsgrad:
            self.max_exp_avg_sq = second = np.maximum(self.max_exp_avg_sq, self.exp_avg_sq)
        bias_correction1 = 1 - beta1**self.t
        bias_correction2 = 1 - beta2**self.t
        denominator = np.sqrt(second) / np.sqrt(bias_correction2) + self.eps
        return x - self.lr / bias_correction1 * self.exp_avg / denominator


def adamw_rule(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
) -> AdamRule:
    """``torch.optim.AdamW``: :class:`AdamRule` with decoupled weight decay (default 1e-2)."""
    return AdamRule(lr, betas, eps, weight_decay, amsgrad, decoupled=True)


def _non_negative(**values: float) -> None:
    """The checks ``torch.optim`` makes, so both implementations refuse the same settings."""
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"Invalid {name} value: {value} (must be >= 0)")

"""A first convolution as a matrix product over its stored input patches (see
:mod:`lossvista._input_layers`).

A ``Conv2d`` maps each output position's patch of ``K = C_in * kh * kw`` input numbers through
its ``(C_out, K)`` weight. When the input is the data, the patches are the same at every grid
point: stored once per batch (``F.unfold``, in output-position order, with a last column of
ones where the layer adds a bias), the layer's output at a point is one matrix product of the
patches with the point's ``(K + 1, C_out)`` matrix, laid out as ``(N, H_out, W_out, C_out)``:
channels-last order, which the next convolution reads without a copy under the channels-last
option. A ``Conv1d`` is the same with a height of one (``(N, C, L)`` read as ``(N, C, 1, L)``);
its output is returned contiguous.
"""

from __future__ import annotations

import torch
from torch import nn


def patchable(module: nn.Module) -> bool:
    """A ``Conv1d``/``Conv2d`` patches can give: ungrouped, zero padding given in numbers (or
    "valid")."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d))
        and module.groups == 1
        and module.padding_mode == "zeros"
        and (module.padding == "valid" or not isinstance(module.padding, str))
    )


def width(weight: torch.Tensor, biased: bool) -> int:
    """Numbers in one stored patch of a convolution with ``weight``: ``C_in * kh * kw``, plus
    one for a bias."""
    return int(weight[0].numel()) + int(biased)


def matrix(pair: tuple[torch.Tensor, torch.Tensor | None], biased: bool) -> torch.Tensor:
    """A (folded) ``(weight, bias)`` as the ``(K[+1], C_out)`` matrix patches are multiplied
    by (a zero bias row where the pair has no bias of its own)."""
    weight, bias = pair
    result = weight.reshape(weight.shape[0], -1).t()
    if biased:
        row = bias if bias is not None else weight.new_zeros(weight.shape[0])
        result = torch.cat([result, row.reshape(1, -1)], 0)
    return result.contiguous()


def unfolded(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, biased: bool) -> torch.Tensor:
    """The ``(N, H_out, W_out, K[+1])`` patches of the batch ``x`` (4-D; 3-D for a ``Conv1d``,
    with ``H_out`` one) that the layer's output positions see (a last column of ones with
    ``biased``)."""
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    padding = (0,) * len(kernel) if isinstance(module.padding, str) else module.padding
    if isinstance(module, nn.Conv1d):  # a height of one
        x = x.unsqueeze(2)
        kernel, dilation, stride, padding = (
            (1, *kernel),
            (1, *dilation),
            (1, *stride),
            (0, *padding),
        )
    columns = nn.functional.unfold(x, kernel, dilation, padding, stride)  # (N, K, L)
    n, k = x.shape[0], columns.shape[1]
    size = [
        (x.shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
        for d in (0, 1)
    ]
    patches = x.new_empty(n, size[0], size[1], k + int(biased))
    patches[..., :k] = columns.transpose(1, 2).reshape(n, size[0], size[1], k)
    if biased:
        patches[..., k] = 1.0
    return patches


def product(
    patches: torch.Tensor, matrix: torch.Tensor, channels_last: bool, dims: int = 4
) -> torch.Tensor:
    """The layer's ``(N, C_out, H_out, W_out)`` output (``(N, C_out, L_out)`` with ``dims``
    3): ``patches @ matrix``, in channels-last layout with ``channels_last``, else contiguous."""
    n, h, w, k = patches.shape
    output = torch.mm(patches.view(-1, k), matrix).view(n, h, w, -1).permute(0, 3, 1, 2)
    if dims == 3:
        return output.squeeze(2).contiguous()
    return output if channels_last else output.contiguous()

"""VisNet's two shallow branches: coarse colour and layout at 1/4 and 1/8 of the input scale."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CONV_CHANNELS = 96


@dataclass(frozen=True)
class Pool:
    """A max-pool's geometry; all pools use ceil mode, as the original Caffe model did."""

    kernel: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class BranchGeometry:
    """One shallow branch: input pool, then conv 96 x 8x8 stride 4 pad 4, then output pool."""

    input_pool: Pool
    output_pool: Pool
    conv_kernel: int = 8
    conv_stride: int = 4
    conv_padding: int = 4


BRANCH_A = BranchGeometry(Pool(4, 4), Pool(7, 4, 3))
BRANCH_B = BranchGeometry(Pool(8, 8), Pool(3, 2, 1))


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution (floor rounding, as in Caffe and torch)."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, pool: Pool) -> int:
    """Output side of a ceil-mode max-pool by Caffe's rule.

    Caffe rounds up, then drops a last window that would start inside the right padding
    (only when padding is set). torch's ceil mode applies the same drop rule, so the two agree
    for every pool here (kernel >= stride); tests check this over a range of sizes.
    """
    out = math.ceil((size + 2 * pool.padding - pool.kernel) / pool.stride) + 1
    if pool.padding and (out - 1) * pool.stride >= size + pool.padding:
        out -= 1
    return out


def branch_sides(size: int, geometry: BranchGeometry) -> tuple[int, int, int]:
    """Spatial sides after the input pool, the conv and the output pool."""
    pooled = pool_out(size, geometry.input_pool)
    conv = conv_out(pooled, geometry.conv_kernel, geometry.conv_stride, geometry.conv_padding)
    return pooled, conv, pool_out(conv, geometry.output_pool)


def _max_pool(pool: Pool) -> nn.MaxPool2d:
    return nn.MaxPool2d(pool.kernel, pool.stride, pool.padding, ceil_mode=True)


def _branch(geometry: BranchGeometry) -> nn.Sequential:
    conv = nn.Conv2d(
        3, CONV_CHANNELS, geometry.conv_kernel, geometry.conv_stride, geometry.conv_padding
    )
    layers = OrderedDict(
        pool_in=_max_pool(geometry.input_pool),
        conv=conv,
        relu=nn.ReLU(inplace=True),
        norm=nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0),
        pool_out=_max_pool(geometry.output_pool),
        flatten=nn.Flatten(),
    )
    return nn.Sequential(layers)


class ShallowBranches(nn.Module):
    """Both shallow branches, concatenated and L2-normalised: (N, 3, S, S) -> (N, out_dim)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.branch_a = _branch(BRANCH_A)
        self.branch_b = _branch(BRANCH_B)
        sides = [branch_sides(input_size, g)[-1] for g in (BRANCH_A, BRANCH_B)]
        if min(sides) < 1:
            raise ValueError(f"input size {input_size} is too small for the shallow branches")
        self.branch_dims = tuple(CONV_CHANNELS * side * side for side in sides)
        self.out_dim = sum(self.branch_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return F.normalize(parts, dim=1)

    def from_quarter(self, quarter: torch.Tensor) -> torch.Tensor:
        """The same output from the input already max-pooled 4x4 (branch A's first step).

        Branch B's 8x8 pool is a 2x2 pool of that (non-overlapping windows nest), so a trainer
        can cache the small quarter image instead of the full input.
        """
        a = self.branch_a[1:](quarter)
        b = self.branch_b[1:](F.max_pool2d(quarter, 2, 2, ceil_mode=True))
        return F.normalize(torch.cat([a, b], dim=1), dim=1)

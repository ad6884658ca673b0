"""exactem: exact probability and exact EM learning for deep generative networks.

A decoder that is a ReLU, leaky-ReLU or absolute-value MLP is affine on each region of a
finite partition of latent space; exactem enumerates that partition exactly and builds exact
likelihoods, posteriors and EM on it.

Reliability: errors are exceptions, never crashes. Bad input raises ``ValueError``; a region
count above ``max_regions`` raises :class:`RegionLimitError` as soon as it is certain; work
that would not fit in memory raises ``MemoryError`` with the size it needed; a numerical
failure (a NaN inside an integral) raises :class:`NumericalError` saying where; a bug in the
engine raises :class:`InternalError`, and exactem stays usable after it. Ctrl-C stops any
call within a fraction of a second.

Environment: ``EXACTEM_SIMD=baseline|avx2|avx512|auto`` (read once, at the first computation)
forces the vector kernels; ``baseline`` reproduces a processor without fused multiply-add.
A request beyond what the processor has falls back to its widest kernels, with a message.
Results differ between kernels only in rounding.
"""

from ._core import ExactemError, InternalError, NumericalError, RegionLimitError
from . import datasets, gauss
from .decoder import Decoder
from .cost import CostEstimate, estimate_cost
from .estimator import ExactEM
from .model import DGN, EStepResult, Posterior
from .partition import Partition
from .compare import compare  # the function; its module stays importable as exactem.compare

__all__ = [
    "Decoder",
    "ExactEM",
    "estimate_cost",
    "CostEstimate",
    "compare",
    "datasets",
    "gauss",
    "Partition",
    "DGN",
    "Posterior",
    "EStepResult",
    "ExactemError",
    "RegionLimitError",
    "NumericalError",
    "InternalError",
]
__version__ = "0.1.0"

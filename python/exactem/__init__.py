"""exactem: exact probability and exact EM learning for deep generative networks.

A decoder that is a ReLU, leaky-ReLU or absolute-value MLP is affine on each region of a
finite partition of latent space; exactem enumerates that partition exactly and builds exact
likelihoods, posteriors and EM on it.
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

"""The paper's three mitigations, each measured before and after: an input filter, neuron pruning and
unlearning. Pruning and unlearning return a new model unless ``inplace=True``."""

from .filter import InputFilter, filter_inputs
from .prune import prune_neurons
from .result import Measure, MitigationResult, measure
from .unlearn import unlearn

__all__ = [
    "InputFilter",
    "Measure",
    "MitigationResult",
    "filter_inputs",
    "measure",
    "prune_neurons",
    "unlearn",
]

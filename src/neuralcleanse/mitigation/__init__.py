"""The paper's three mitigations, each measured before and after: an input filter, neuron pruning and
unlearning. Each takes a :class:`~neuralcleanse.suspect.SuspectedBackdoor` (or a reversed trigger with
``label=``); pruning and unlearning return a new model unless ``inplace=True``. A result's ``details`` are
the method's typed fields, which render themselves (``lines()``, ``table()``, ``figures()``)."""

from .details import DETAILS, DetailsTable, MitigationDetails, RawDetails, register_details
from .filter import FilterDetails, InputFilter, filter_inputs
from .prune import PruneDetails, prune_neurons
from .result import Measure, MitigationResult, measure
from .unlearn import UnlearnDetails, unlearn

__all__ = [
    "DETAILS",
    "DetailsTable",
    "FilterDetails",
    "InputFilter",
    "Measure",
    "MitigationDetails",
    "MitigationResult",
    "PruneDetails",
    "RawDetails",
    "UnlearnDetails",
    "filter_inputs",
    "measure",
    "prune_neurons",
    "register_details",
    "unlearn",
]

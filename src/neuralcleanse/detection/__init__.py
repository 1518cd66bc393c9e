"""Detection: reverse-engineer every label's trigger (batched over labels) and the MAD outlier test."""

from .engine import LabelState, reverse_engineer
from .outlier import OutlierResult, mad_outlier_test
from .reference import Reference
from .report import DetectionReport, LabelResult
from .scan import NeuralCleanse, ScanProgress, scan
from .settings import ReverseSettings

__all__ = [
    "DetectionReport",
    "LabelResult",
    "LabelState",
    "NeuralCleanse",
    "OutlierResult",
    "Reference",
    "ReverseSettings",
    "ScanProgress",
    "mad_outlier_test",
    "reverse_engineer",
    "scan",
]

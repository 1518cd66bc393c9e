"""Detection: reverse-engineer every label's trigger (batched over labels) and the MAD outlier test."""

from .engine import LabelState, reverse_engineer
from .outlier import OutlierResult, mad_outlier_test
from .reference import Reference
from .report import DetectionReport, LabelResult
from .scan import NeuralCleanse, ScanProgress, scan
from .settings import ReverseSettings
from .statistics import STATISTICS, OutlierStatistic, get_statistic

__all__ = [
    "DetectionReport",
    "LabelResult",
    "LabelState",
    "NeuralCleanse",
    "OutlierResult",
    "OutlierStatistic",
    "Reference",
    "ReverseSettings",
    "STATISTICS",
    "ScanProgress",
    "get_statistic",
    "mad_outlier_test",
    "reverse_engineer",
    "scan",
]

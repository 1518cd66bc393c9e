"""The package version and the software a result was made with: a leaf module both wings (the lab and
the scanner) import without reaching into each other."""

from __future__ import annotations

import platform

__all__ = ["__version__", "software_versions"]

__version__ = "0.1.0"


def software_versions() -> dict[str, str]:
    """The versions recorded in model cards and scan reports."""
    import numpy as np  # imported here: ``import neuralcleanse`` reads the version without torch
    import torch

    return {
        "neuralcleanse": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }

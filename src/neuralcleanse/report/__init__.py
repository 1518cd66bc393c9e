"""Writing results for people: images now; plots and HTML later."""

from .images import save_png, tensor_to_pil

__all__ = ["save_png", "tensor_to_pil"]

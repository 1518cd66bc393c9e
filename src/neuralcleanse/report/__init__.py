"""Writing results for people: trigger images, figures and a self-contained HTML report."""

from .html import render_html, write_html_report
from .images import save_png, tensor_to_pil

__all__ = ["render_html", "save_png", "tensor_to_pil", "write_html_report"]

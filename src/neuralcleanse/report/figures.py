"""The report's figures, drawn with matplotlib's Agg backend (no display needed), returned as PNG bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Sequence
from typing import Any

from ..detection.statistics import get_statistic

__all__ = ["norm_chart", "pruning_curve", "trigger_comparison", "MANY_LABELS"]

#: above this many labels the L1 chart shows distributions with the flagged labels annotated
MANY_LABELS = 60

_RED, _GREY, _BLUE = "#c62828", "#9e9e9e", "#1565c0"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def norm_chart(
    labels: Sequence[int],
    names: Sequence[str],
    l1: Sequence[float],
    index: Sequence[float],
    flagged: Sequence[int],
    *,
    median: float,
    mad: float,
    threshold: float,
    statistic: str = "l1",
    quantity: str = "L1 norm",
    estimated: Collection[int] = (),
) -> bytes:
    """Two panels: every label's reversed-trigger L1 norm (sorted) with the median, the MAD band and the
    flag line, flagged labels in red; and the anomaly index with the threshold. With more than
    :data:`MANY_LABELS` labels the panels become distributions with the flagged labels annotated.
    ``median`` and ``mad`` are in the units of ``statistic`` (a name in
    :data:`~neuralcleanse.detection.statistics.STATISTICS`; ``log`` and ``relative``: of logarithms); the
    chart draws them back in the units of the values. ``quantity`` names what the values are (e.g. each
    norm over its reference norm); labels in ``estimated`` (screened on measured ranges) are hatched."""
    stat = get_statistic(statistic)
    log_units, max_ratio = stat.log_units, stat.max_ratio
    plt = _plt()
    rows = [
        (lab, name, n, a)
        for lab, name, n, a in zip(labels, names, l1, index, strict=True)
        if math.isfinite(n)
    ]
    rows.sort(key=lambda r: r[2])
    flag = set(flagged)
    many = len(rows) > MANY_LABELS
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    cut = median - threshold * mad if math.isfinite(mad) else math.nan
    lo, hi = median - mad, median + mad
    if log_units:  # back to the values' units: the band and the cut are ratios around the median
        median, lo, hi, cut = (math.exp(v) if math.isfinite(v) else v for v in (median, lo, hi, cut))
    if not many:
        xs = range(len(rows))
        bars = ax1.bar(xs, [r[2] for r in rows], color=[_RED if r[0] in flag else _GREY for r in rows])
        guessed = [bar for bar, r in zip(bars, rows, strict=True) if r[0] in estimated]
        for bar in guessed:
            bar.set(hatch="///", facecolor="#d8d8d8", edgecolor=_GREY)
        if guessed:
            guessed[0].set_label("screened: an estimate")
        ax1.set_xticks(list(xs), [str(r[0]) for r in rows], rotation=90 if len(rows) > 20 else 0, fontsize=8)
        ax1.set_xlabel(f"label (sorted by {quantity})")
    else:
        ax1.hist([r[2] for r in rows], bins=40, color=_GREY)
        for r in rows:
            if r[0] in flag:
                ax1.axvline(r[2], color=_RED, lw=1.2)
                ax1.text(r[2], ax1.get_ylim()[1] * 0.5, f" label {r[0]}", color=_RED, fontsize=8, rotation=90)
        ax1.set_xlabel(f"{quantity} of the reversed trigger")
        ax1.set_ylabel("labels")
    line = ax1.axhline if not many else ax1.axvline
    if math.isfinite(median):
        line(median, color=_BLUE, lw=1.5, label=f"median {median:.3g}")
        if math.isfinite(mad) and mad > 0:
            band = f"median ± MAD ({mad:.1f})" if not log_units else f"median ×/÷ e^MAD ({math.exp(mad):.2f})"
            (ax1.axhspan if not many else ax1.axvspan)(lo, hi, color=_BLUE, alpha=0.12, label=band)
            line(cut, color=_RED, lw=1, ls="--", label=f"flag below {cut:.3g} (index {threshold:g})")
        if max_ratio < 1:  # the effect size: a flagged label must also lie below this
            line(median * max_ratio, color=_RED, lw=1, ls=":", label=f"and below {median * max_ratio:.3g} "
                 f"({max_ratio:g} × median)")  # fmt: skip
        if stat.compact_ratio is not None and stat.compact_ratio > max_ratio:
            line(median * stat.compact_ratio, color=_RED, lw=0.8, ls=(0, (1, 3)),
                 label=f"or {median * stat.compact_ratio:.3g} with a compact trigger")  # fmt: skip
    ax1.set_title(f"{quantity} of each label's smallest trigger")
    if not many:
        ax1.set_ylabel(quantity)
    _legend(ax1, loc="upper center" if many else "upper left")
    below = [r for r in rows if r[2] < median]
    if not many:
        xs = range(len(rows))
        ax2.bar(xs, [r[3] if math.isfinite(r[3]) else 0 for r in rows],
                color=[_RED if r[0] in flag else (_BLUE if r in below else _GREY) for r in rows])  # fmt: skip
        ax2.set_xticks(list(xs), [str(r[0]) for r in rows], rotation=90 if len(rows) > 20 else 0, fontsize=8)
        ax2.set_xlabel("label (same order)")
    else:
        ax2.hist(
            [r[3] for r in below if math.isfinite(r[3])],
            bins=30,
            color=_BLUE,
            alpha=0.7,
            label="below the median",
        )
        for r in rows:
            if r[0] in flag:
                ax2.axvline(r[3], color=_RED, lw=1.2)
                ax2.text(r[3], ax2.get_ylim()[1] * 0.5, f" label {r[0]}", color=_RED, fontsize=8, rotation=90)
        ax2.set_xlabel("anomaly index")
    (ax2.axhline if not many else ax2.axvline)(
        threshold, color=_RED, lw=1, ls="--", label=f"threshold {threshold:g}"
    )
    what = ("log L1" if log_units else "L1") if quantity == "L1 norm" else f"log({quantity})"
    ax2.set_title(f"anomaly index |{what} − median| / MAD (blue: below the median)")
    _legend(ax2, loc="upper center" if many else "upper right")
    fig.tight_layout()
    return _png(fig)


def _legend(ax: Any, *, loc: str = "best") -> None:
    """A legend when something on ``ax`` has a label (matplotlib warns about an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc=loc)


def pruning_curve(curve: Sequence[dict[str, Any]], *, accuracy_floor: float | None = None) -> bytes:
    """Fraction of neurons pruned → clean accuracy and attack success; ``accuracy_floor`` (a fraction)
    draws the clean-accuracy budget's line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [100 * p["fraction"] for p in curve]
    if accuracy_floor is not None:
        ax.axhline(100 * accuracy_floor, color=_BLUE, ls=":", lw=1, label="clean-accuracy budget")
    ax.plot(xs, [100 * p["clean_accuracy"] for p in curve], "o-", color=_BLUE, label="clean accuracy")
    ax.plot(
        xs, [100 * p["attack_success"] for p in curve], "s-", color=_RED, label="attack success (reversed)"
    )
    if all(p.get("real_attack_success") is not None for p in curve):
        ax.plot(
            xs,
            [100 * p["real_attack_success"] for p in curve],
            "^--",
            color="#ef6c00",
            label="attack success (real)",
        )
    ax.set_xlabel("neurons pruned (%)")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend(ax)
    ax.set_title("neuron pruning")
    fig.tight_layout()
    return _png(fig)


def trigger_comparison(rows: Sequence[tuple[str, Sequence[Any]]], *, label: int) -> bytes:
    """Triggers side by side, one captioned row each: ``(caption, [mask, mask × pattern, stamped])``, each
    image a ``(C, H, W)`` tensor in [0, 1] (the stamped example may be missing)."""
    plt = _plt()
    columns = ("mask", "mask × pattern", "stamped clean image")
    width = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(2.2 * width, 2.5 * len(rows)), squeeze=False)
    for r, (caption, images) in enumerate(rows):
        for c in range(width):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.axis("off")
                continue
            img = images[c].detach().float().clamp(0, 1).cpu()
            grey = img.shape[0] == 1
            ax.imshow(img[0] if grey else img.permute(1, 2, 0), cmap="gray" if grey else None,
                      vmin=0, vmax=1, interpolation="nearest")  # fmt: skip
            ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(caption, fontsize=9)
    fig.suptitle(f"label {label}: triggers compared", fontsize=10)
    fig.tight_layout()
    return _png(fig)

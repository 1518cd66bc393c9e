"""``index.html``: one page listing every model of a fleet scan, linking each model's own report."""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from ..report.html import _CSS, _SORT_JS  # the scan report's look and sortable tables
from .jobs import VERDICT_ORDER

if TYPE_CHECKING:
    from .jobs import ModelResult
    from .summary import FleetSummary

__all__ = ["render_index"]

_CLASS = {"backdoored": "flag", "failed": "fail", "inconclusive": "unk"}
_EXTRA_CSS = "tr.fail td{color:#8d6e00}tr.unk td{color:#6d4c41}td.err{max-width:36rem;text-align:left}"


def _seconds(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1f}"


def _row(r: ModelResult) -> str:
    e = html.escape
    name = f'<a href="{e(r.out)}/report.html">{e(r.name)}</a>' if r.status == "done" else e(r.name)
    flagged = ", ".join(f"{k} ({e(n)})" for k, n in zip(r.flagged, r.flagged_names, strict=False)) or "–"
    index = "–" if r.anomaly_index is None else f"{r.anomaly_index:.2f}"
    order = VERDICT_ORDER.get(r.verdict, 9)
    note = r.error or ("reused (finished earlier)" if r.reused else "resumed" if r.resumed else "")
    cells = [
        f'<td class="l">{name}</td>',
        f'<td class="l" data-v="{order}">{e(r.verdict)}</td>',
        f'<td class="l">{flagged}</td>',
        f"<td>{index}</td>",
        f"<td>{_seconds(r.seconds)}</td>",
        f"<td>{r.images_processed if r.images_processed is not None else '–'}</td>",
        f"<td>{_seconds(r.wall_seconds)}</td>",
        f'<td class="l">{e(r.model)}</td>',
        f'<td class="l err">{e(note)}</td>',
    ]
    cls = _CLASS.get(r.verdict)
    return f"<tr{f' class={cls!r}' if cls else ''}>" + "".join(cells) + "</tr>"


def render_index(summary: FleetSummary) -> str:
    """The page: counts, how the run went, and a sortable table of every model, flagged ones first."""
    e = html.escape
    c = summary.counts
    verdict = (
        f"{c['total']} model{'s' * (c['total'] != 1)}: <b>{c['backdoored']} backdoored</b>, {c['inconclusive']} inconclusive, "
        f"{c['clean']} clean, {c['failed']} failed"
        + (f", {c['pending']} not finished" if c["pending"] else "")
    )
    cls = "bad" if c["backdoored"] else "unk" if c["failed"] or c["inconclusive"] or c["pending"] else "ok"
    runner = ", ".join(f"{k} {v}" for k, v in summary.runner.items() if v is not None)
    settings = ", ".join(f"{k} {v}" for k, v in summary.settings.items() if v not in (None, False, (), []))
    head = [
        "model",
        "verdict",
        "flagged labels",
        "anomaly index",
        "scan s",
        "images",
        "job s",
        "path",
        "note",
    ]
    table = (
        '<table class="sortable"><thead><tr>'
        + "".join(f'<th class="{"l" if h in ("model", "verdict", "flagged labels", "path", "note") else ""}">{h}</th>' for h in head)
        + "</tr></thead><tbody>"
        + "".join(_row(r) for r in summary.sorted("verdict"))
        + "</tbody></table>"
    )  # fmt: skip
    parts = [
        "<h1>Neural Cleanse fleet scan</h1>",
        f'<div class="verdict {cls}">{verdict}</div>',
        f'<p class="muted">Started {e(summary.started)}; {summary.seconds:.0f} s wall time; '
        f"{summary.images_processed:,} images through the models; {e(runner)}.</p>",
        "<h2>Models (flagged first; click a column to sort, a name for its report)</h2>",
        table,
        f'<p class="muted">Shared settings: {e(settings) or "the defaults"}.</p>',
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Neural Cleanse fleet scan</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}{_EXTRA_CSS}</style>'
        "</head><body>" + "\n".join(parts) + f"<script>{_SORT_JS}</script></body></html>"
    )

"""One self-contained HTML page for a scan (and the validation and mitigations that followed it).

Everything is inline — figures and trigger images as ``data:`` PNGs, the stylesheet, a few lines of
optional JavaScript that make the table sortable — so the file can be mailed, archived or opened
offline; nothing is fetched from the network. The figures are also written beside it as PNG files.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._format import pct
from .._io import atomic_directory, atomic_write_bytes, inside
from ..detection.report import REPORT_FILE, DetectionReport
from ..errors import DataError, SettingsError
from ..fingerprint import report_weights_sha256
from ..mitigation import DetailsTable, MitigationResult
from ..triggers import Trigger
from ..validation import ValidationResult
from .figures import norm_chart
from .images import png_bytes

__all__ = ["render_html", "write_html_report", "GALLERY_OTHERS"]

#: besides the flagged labels, the gallery shows this many of the lowest-norm other labels
GALLERY_OTHERS = 3

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1180px;color:#212121;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.verdict{font-size:1.15rem;padding:.8rem 1rem;border-radius:6px;margin:1rem 0}
.bad{background:#ffebee;border-left:6px solid #c62828}.ok{background:#e8f5e9;border-left:6px solid #2e7d32}
.unk{background:#fff8e1;border-left:6px solid #f9a825}.muted{color:#666;font-size:.9rem}
table{border-collapse:collapse;font-size:.88rem;margin:.5rem 0}th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}
th{background:#fafafa;cursor:pointer;position:sticky;top:0}td.l,th.l{text-align:left}tr.flag td{color:#c62828;font-weight:600}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:1rem}
.card{border:1px solid #e0e0e0;border-radius:6px;padding:.6rem}.card.flag{border-color:#c62828}
.strip{display:flex;gap:.4rem;flex-wrap:wrap}.strip figure{margin:0;text-align:center;font-size:.75rem;color:#555}
.strip img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #ddd}img.fig{max-width:100%}
.scroll{max-height:28rem;overflow:auto}code{background:#f5f5f5;padding:0 .2rem}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, i){th.addEventListener('click', function(){
 var tb=th.closest('table').tBodies[0], rows=Array.from(tb.rows), asc=th.dataset.asc!=='1'; th.dataset.asc=asc?'1':'0';
 rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent, y=b.cells[i].dataset.v||b.cells[i].textContent;
  var p=parseFloat(x), q=parseFloat(y); var c=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y); return asc?c:-c;});
 rows.forEach(function(r){tb.appendChild(r);});});});
"""


def _img(data: bytes, alt: str, cls: str = "") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (
        f'<img{f" class={cls!r}" if cls else ""} alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'
    )


#: what the page shows for an unknown number
_MISSING = "–"


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return _MISSING
    return f"{x:.{digits}f}" if isinstance(x, float) else html.escape(str(x))


def _text(sentence: str) -> str:
    """A sentence of the library's (plain text) in the page."""
    return html.escape(sentence, quote=False)


def _paragraph(line: str, end: str = ".") -> str:
    """One of the library's lines (lower-case, no full stop) as a paragraph of the page."""
    return f"<p>{html.escape(line[:1].upper() + line[1:])}{end}</p>"


def _verdict(report: DetectionReport) -> tuple[str, str]:
    stat = report.outlier_statistic
    if report.verdict == "backdoored":
        parts = []
        for k in sorted(report.flagged, key=lambda k: report.label(k).l1_norm):
            r = report.label(k)
            parts.append(
                f"label <b>{k}</b> ({html.escape(r.name)}): anomaly index <b>{r.anomaly_index:.2f}</b>, "
                f"its smallest trigger has L1 {r.l1_norm:.1f} against {_text(stat.against(report, r))}"
            )
        text = (
            "<b>Backdoored.</b> "
            + "; ".join(parts)
            + f". An anomaly index above {report.threshold:g} means the label can be reached with far less "
            + f"change to the input than {_text(stat.cheaper_than)} — the signature of a planted trigger."
            + _strength(report)
        )
        return "bad", text
    if report.verdict == "clean":
        return "ok", (
            "<b>Clean.</b> No label can be reached with unusually little change: "
            + html.escape(stat.clean_reason(report))
            + "."
            + _strength(report)
        )
    reason = report.summary().removeprefix("inconclusive: ")
    return "unk", "<b>Inconclusive.</b> " + html.escape(reason[:1].upper() + reason[1:])


def _strength(report: DetectionReport) -> str:
    """The statistic's strength of evidence as a sentence of the verdict, or nothing."""
    strength = report.evidence()
    return f" <i>{html.escape(strength[:1].upper() + strength[1:])}.</i>" if strength else ""


def _real_triggers(report: DetectionReport) -> dict[int, Trigger]:
    """The planted triggers, when the report's model is a model directory whose card knows them."""
    from ..models.card import ModelCard
    from ..models.store import trigger_path

    path = report.model.get("path")
    if not path or not (Path(path) / "card.json").is_file():
        return {}
    try:
        card = ModelCard.load(Path(path) / "card.json")
        if report_weights_sha256(report.model) != card.weights_sha256:
            return {}
        return {b.target: Trigger.load(trigger_path(Path(path), b)) for b in card.backdoors}
    except Exception:  # the real trigger is a bonus: a changed or unreadable card just leaves it out
        return {}


def _strip(items: Sequence[tuple[str, bytes]]) -> str:
    figs = "".join(
        f"<figure>{_img(png, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, png in items
    )
    return f'<div class="strip">{figs}</div>'


def _saved_png(root: Path, path: Path) -> bytes | None:
    """A picture the scan saved in its folder, or ``None`` when it is not there; a link out of the scan
    folder is refused (the page would carry another file's bytes)."""
    if not path.is_file():
        return None
    return inside(root, path, what="the scan's picture").read_bytes()


def _gallery(report: DetectionReport, root: Path, example: bytes | None) -> str:
    others = [r.label for r in sorted(report.labels, key=lambda r: (not math.isfinite(r.l1_norm), r.l1_norm))
              if r.label not in report.flagged][:GALLERY_OTHERS]  # fmt: skip
    real = _real_triggers(report)
    cards = []
    for k in list(report.flagged) + others:
        r = report.label(k)
        trig = report.triggers[k]
        stem = root / "images" / f"label_{k:04d}"

        def png(kind: str, fallback: Any, *, _stem: Path = stem) -> bytes:
            saved = _saved_png(root, Path(f"{_stem}_{kind}.png"))
            return saved if saved is not None else png_bytes(fallback)

        items = [("mask", png("mask", trig.mask)), ("pattern", png("pattern", trig.pattern)),
                 ("mask × pattern", png("fusion", trig.mask[None] * trig.pattern))]  # fmt: skip
        if example is not None:
            items.append(("clean image", example))
        stamped = _saved_png(root, Path(f"{stem}_stamped.png"))
        if stamped is not None:
            items.append(("stamped", stamped))
        body = _strip(items)
        if k in real:
            t = real[k]
            body += '<p class="muted">the real (planted) trigger, from the model card:</p>' + _strip(
                [
                    ("real mask", png_bytes(t.mask)),
                    ("real mask × pattern", png_bytes(t.mask[None] * t.pattern)),
                ]
            )
        flag = " flag" if r.flagged else ""
        cards.append(
            f'<div class="card{flag}"><b>label {k} ({html.escape(r.name)})</b> — L1 {_fmt(r.l1_norm, 1)}, '
            f"attack success {pct(r.attack_success, missing=_MISSING)}, anomaly index {_fmt(r.anomaly_index)}"
            f"{' — FLAGGED' if r.flagged else ''}{body}</div>"
        )
    return f'<div class="gallery">{"".join(cards)}</div>'


def _label_table(report: DetectionReport) -> str:
    ref = report.reference.l1_norms if report.reference is not None else None
    cols = ("label", "name", "L1 norm", *(("reference L1",) if ref else ()), "attack success", "steps", "stop",
            "anomaly index", "flagged")  # fmt: skip
    head = "".join(f"<th{' class=l' if c == 'name' else ''}>{c}</th>" for c in cols)
    rows = []
    for r in sorted(report.labels, key=lambda r: (not math.isfinite(r.l1_norm), r.l1_norm)):
        cls = ' class="flag"' if r.flagged else ""
        ref_cell = f"<td>{_fmt(ref.get(r.label, math.nan))}</td>" if ref else ""
        rows.append(
            f"<tr{cls}><td>{r.label}</td><td class=l>{html.escape(r.name)}</td><td>{_fmt(r.l1_norm)}</td>{ref_cell}"
            f"<td data-v='{r.attack_success}'>{pct(r.attack_success, missing=_MISSING)}</td><td>{r.steps}</td>"
            f"<td class=l>{html.escape(r.stop_reason)}{'' if r.reached else ' (not reached)'}</td>"
            f"<td>{_fmt(r.anomaly_index)}</td><td class=l>{'yes' if r.flagged else ''}</td></tr>"
        )
    return f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><td class=l>{html.escape(k)}</td><td class=l>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _validation_html(v: ValidationResult) -> str:
    body = "".join(
        f"<tr><td class=l>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
        for a, b, c in v.rows()
    )
    extra = "".join(_paragraph(line) for line in v.lines()) + _notes(v.notes)
    return (
        f"<h2>Is the reversed trigger the real one? (label {v.label}, layer <code>{html.escape(v.layer)}</code>)</h2>"
        f"<table><thead><tr><th class=l></th><th>reversed</th><th>real</th></tr></thead><tbody>{body}</tbody></table>{extra}"
    )


def _details_table(t: DetailsTable) -> str:
    def cells(row: Sequence[str], tag: str) -> str:
        return "".join(
            f"<{tag}{' class=l' if i == 0 else ''}>{html.escape(c)}</{tag}>" for i, c in enumerate(row)
        )

    rows = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in t.rows)
    title = _paragraph(t.title, ":") if t.title else ""
    return f"{title}<table><thead><tr>{cells(t.columns, 'th')}</tr></thead><tbody>{rows}</tbody></table>"


def _notes(notes: Sequence[str]) -> str:
    """A result's notes (where it stopped, what it was measured on, its caveats) as a list."""
    return "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>" if notes else ""


def _mitigation_html(m: MitigationResult, figures: dict[str, bytes]) -> str:
    body = "".join(
        f"<tr><td class=l>{html.escape(k)}</td><td>{pct(x, missing=_MISSING)}</td><td>{pct(y, missing=_MISSING)}</td></tr>"
        for k, x, y in m.rows()
    )
    d = m.details
    extra = "".join(_paragraph(line) for line in d.lines())
    table = d.table()
    if table is not None:
        extra += _details_table(table)
    for name, png in d.figures(m.label).items():
        figures[name] = png
        extra += _img(png, name.removesuffix(".png").replace("_", " "), "fig")
    extra += _notes(m.notes)
    return (
        f"<h2>Mitigation: {html.escape(m.method)} (label {m.label})</h2><table><thead><tr><th class=l></th><th>before</th>"
        f"<th>after</th></tr></thead><tbody>{body}</tbody></table>{extra}"
    )


def render_html(
    report: DetectionReport, root: Path, *, validation: Any = None, mitigations: Sequence[Any] = ()
) -> tuple[str, dict[str, bytes]]:
    """The page and its figures (name → PNG bytes) for the report stored in ``root``."""
    names = [r.name for r in report.labels]
    values, quantity = report.outlier_statistic.plotted(report)
    figures = {
        "l1_norms.png": norm_chart(
            [r.label for r in report.labels],
            names,
            values,
            [r.anomaly_index for r in report.labels],
            report.flagged,
            median=report.median,
            mad=report.index_scale,
            threshold=report.threshold,
            statistic=report.statistic,
            quantity=quantity,
            estimated=report.estimated,
        )  # fmt: skip
    }
    example = _saved_png(root, root / "images" / "example.png")
    cls, verdict = _verdict(report)
    if not report.outlier_statistic.paper:
        verdict += f"<br><small>Beside it, {html.escape(report.paper_test())}.</small>"
    if report.transfer is not None and report.verdict == "backdoored":  # else its verdict says it all
        check = report.transfer
        verdict += (
            f"<br><small>Transfer check{': ' if check.usable else ' '}{html.escape(check.explain())}.</small>"
        )
    model = report.model
    run = report.run
    facts = [
        ("model", model.get("path", "in-memory model")),
        ("model format", model.get("format", model.get("arch", _MISSING))),
        ("weights sha256", report_weights_sha256(model) or _MISSING),
        ("state fingerprint (sha256)", model.get("fingerprint", _MISSING)),
        (
            "data",
            ", ".join(
                f"{k}={v}"
                for k, v in report.data.items()
                if k in ("dataset", "path", "format", "split", "source") and v is not None
            ),
        ),
        ("clean images used", report.data.get("images")),
        ("loss / mode", f"{report.settings.get('loss')} / {report.settings.get('mode')}"),
        ("seed", report.settings.get("seed")),
        (
            "wall time",
            f"{run.get('seconds', '–')} s on {run.get('device', '–')} ({run.get('images_per_second', '–')} images/s)",
        ),
        ("software", ", ".join(f"{k} {v}" for k, v in run.get("software", {}).items())),
    ]
    settings = [(k, v) for k, v in report.settings.items()]
    parts = [
        f"<h1>Neural Cleanse scan — {html.escape(str(model.get('path', 'model')))}</h1>",
        f'<div class="verdict {cls}">{verdict}</div>',
        "<h2>How far is each label from the others?</h2>",
        _img(figures["l1_norms.png"], "L1 norms and anomaly indices", "fig"),
        f'<p class="muted">{_text(report.outlier_statistic.explain(report))} '
        f"Only labels below the median can be flagged, when their anomaly index exceeds {report.threshold:g}.</p>",
        "<h2>Reversed triggers</h2>",
        _gallery(report, root, example),
    ]
    if validation is not None:
        parts.append(_validation_html(validation))
    for m in mitigations:
        parts.append(_mitigation_html(m, figures))
    parts += [
        f"<h2>Every label ({len(report.labels)}; click a column to sort)</h2>",
        _label_table(report),
        "<h2>Notes</h2>" + _notes(report.notes),
        "<h2>Run facts</h2>",
        _kv(facts),
        "<details><summary>all settings</summary>" + _kv(settings) + "</details>",
    ]
    title = f"Neural Cleanse: {report.verdict}"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        + "\n".join(parts)
        + f"<script>{_SORT_JS}</script></body></html>"
    )
    return page, figures


def require_scan_dir(root: Path) -> None:
    """One-line :class:`DataError` unless ``root`` holds a scan's ``report.json``, saying what it is instead
    (a missing directory, a scan-many folder)."""
    from ..fleet.summary import SUMMARY_FILE

    if (root / REPORT_FILE).is_file():
        return
    if not root.exists():
        raise DataError(f"{root}: no {REPORT_FILE} here (the directory does not exist)")
    if (root / SUMMARY_FILE).is_file():  # a fleet's folder (scan-many): its page is already there
        raise DataError(
            f"{root}: a scan-many folder, whose page is {root / 'index.html'}; give one model's folder "
            "inside it for that model's report"
        )
    raise DataError(f"{root}: no {REPORT_FILE} here (is it a scan's result directory?)")


def write_html_report(
    result_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    validation: Any = None,
    mitigations: Sequence[Any] = (),
) -> Path:
    """Write ``report.html`` (default: in ``result_dir``) and the figures as PNGs beside it: in ``figures/``
    for a page named ``report.html``, in ``<name>_figures/`` for another name (two reports in one folder
    keep their own figures). The figures folder is replaced as a whole, so no figure of an earlier report
    stays; a folder of that name holding anything but PNG files is a one-line :class:`SettingsError`.

    One-line :class:`DataError` when the directory lacks the report or a flagged label's trigger; the HTML
    file appears complete or not at all.
    """
    root = Path(result_dir)
    require_scan_dir(root)
    report = DetectionReport.load(root)  # refuses a report missing a trigger file
    target = Path(out) if out is not None else root / "report.html"
    figures_dir = figures_folder(target)
    page, figures = render_html(report, root, validation=validation, mitigations=mitigations)
    with atomic_directory(figures_dir, force=True) as tmp:
        for name, png in figures.items():
            (tmp / name).write_bytes(png)
        atomic_write_bytes(target, page.encode("utf-8"))
    return target


def figures_folder(page: Path) -> Path:
    """Where the figures of the HTML page ``page`` are written (see :func:`write_html_report`), checked to
    hold nothing but figures: it is replaced as a whole."""
    folder = page.parent / ("figures" if page.name == "report.html" else f"{page.stem}_figures")
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise SettingsError(f"{folder}: the report's figures go in a folder of that name, and it is a file")
    other = next((f for f in sorted(folder.iterdir()) if f.is_dir() or f.suffix != ".png"), None)
    if other is not None:
        raise SettingsError(
            f"{folder}: the report's figures would replace it, and it holds {other.name}, not a PNG figure "
            "(move it, or write the report under another name)"
        )
    return folder

"""What ``validate`` and ``mitigate`` share: the model, its scan report and the suspected backdoor."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import click

from .._format import label_ranges
from ..errors import DataError, ModelError, SettingsError, TriggerError, TriggerFileError
from ..fingerprint import report_weights_sha256
from ..suspect import SuspectedBackdoor
from ..triggers import Trigger
from .loading import ModelSource, build_preprocessing, model_options

__all__ = ["Case", "case_options", "open_case"]


@dataclasses.dataclass
class Case:
    """A loaded model (any format), its scan report and the suspected backdoor to work on."""

    loaded: Any
    report: Any
    backdoor: SuspectedBackdoor
    names: list[str] | None
    #: where the real trigger came from ("the model card", "--real-trigger"), when there is one
    real_from: str | None = None
    #: the labels the model card's backdoors target (empty without a card)
    card_targets: tuple[int, ...] = ()

    @property
    def label(self) -> int:
        return self.backdoor.label

    def images(self, source: ModelSource) -> Any:
        """The clean images (:meth:`ModelSource.images`), checked to be of the model's task."""
        images, _ = source.images(self.loaded, self.names)
        self.check_images(images, source)
        return images

    def splits(self, source: ModelSource) -> tuple[Any, Any, str]:
        """The fine-tuning and measuring images (:meth:`ModelSource.splits`), checked like :meth:`images`."""
        train, test, how = source.splits(self.loaded, self.names)
        for part in (train, test):
            self.check_images(part, source)
        return train, test, how

    def check_images(self, images: Any, source: ModelSource) -> None:
        """The clean images are of the model's task: their classes fit its outputs (as ``scan`` checks)."""
        outputs = self.report.model.get("num_classes")
        if not isinstance(outputs, int):
            return
        if images.num_classes > outputs or (len(images) and int(images.labels.max()) >= outputs):
            where = source.data if source.data is not None else source.dataset_name(self.loaded)
            raise DataError(
                f"{where}: the images have {images.num_classes} classes, the model {self.loaded.path} has "
                f"{outputs} outputs (its scan report says so): images of another task?"
            )
        from ..detection.scan import infer_num_classes

        try:  # the model as loaded now gives what the scan optimised on (one tensor, as many outputs)
            now = infer_num_classes(self.loaded.model, images.images, device=_device_of(self.loaded.model))
        except DataError as exc:
            raise DataError(f"{self.loaded.path}: {exc}") from None
        if now != outputs:
            raise DataError(
                f"{self.loaded.path}: the model gives {now} scores per image, the scan report's model "
                f"{outputs}: load it as it was scanned (the same --output-key)"
            )

    def stamped(self, result: Any) -> Any:
        """``result`` (a validation or mitigation result) recording which model it is of: the scan
        report's model fingerprint, which ``report`` checks; and the real trigger it was measured against.
        Says here, once the work is done, if the label was not flagged (so that an error in any input
        before it stays one line)."""
        unflagged = []
        if self.label not in self.report.flagged:
            unflagged.append(
                f"label {self.label} was not flagged by the scan (verdict: {self.report.verdict}): worked on "
                "it as asked"
            )
        if self.card_targets and self.label not in self.card_targets:
            unflagged.append(
                f"the model card's backdoor targets label {label_ranges(list(self.card_targets))}, not label "
                f"{self.label}: no real trigger is known for this label"
            )
        for note in unflagged:
            logging.getLogger(__name__).warning("%s", note)
        return dataclasses.replace(
            result,
            model_fingerprint=self.report.model.get("fingerprint"),
            notes=[*unflagged, *self.loaded.notes, *result.notes, *self.real_notes()],
        )

    def real_notes(self) -> list[str]:
        """What the real trigger was and where it came from; the source labels it was measured on."""
        b = self.backdoor
        if b.real_trigger is None:
            return []
        t = b.real_trigger
        notes = [f"real trigger from {self.real_from}: {t.spec or 'no spec recorded'} (L1 {t.l1_norm:.1f})"]
        if b.source_labels is not None:
            notes.append(
                f"attack success measured on images of the source labels {label_ranges(list(b.source_labels))} only"
            )
        return notes


def _recorded_pre(value: Any, report_path: Path) -> dict[str, Any] | None:
    """A report's ``model.preprocessing``, checked (a hand-edited report is refused in one line); None for a
    report from before it was recorded."""
    if value is None:
        return None

    def numbers(v: Any) -> bool:
        return v is None or (isinstance(v, list) and bool(v) and all(type(x) in (int, float) for x in v))

    ok = (
        isinstance(value, dict)
        and value.get("input_range", "0-1") in ("0-1", "0-255")
        and value.get("channel_order", "rgb") in ("rgb", "bgr")
        and numbers(value.get("mean"))
        and numbers(value.get("std"))
    )
    if not ok:
        raise DataError(f"{report_path}: malformed scan report (model.preprocessing is {value!r:.120})")
    return dict(value)


def _describe_pre(pre: dict[str, Any]) -> str:
    """A recorded preprocessing (``Preprocessing.to_dict()``) in the command line's words."""
    parts = [f"input range {pre.get('input_range')}"]
    for key in ("mean", "std"):
        if pre.get(key) is not None:
            parts.append(f"{key} {','.join(f'{v:g}' for v in pre[key])}")
    if pre.get("channel_order", "rgb") != "rgb":
        parts.append(f"channel order {pre['channel_order']}")
    return ", ".join(parts)


def _same_pre(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recorded preprocessings are the same function (one mean or std is every channel's)."""

    def channels(v: Any, n: int) -> Any:
        return v * n if isinstance(v, list) and len(v) == 1 else v

    n = max(
        len(v) for v in (a.get("mean"), a.get("std"), b.get("mean"), b.get("std"), [0]) if isinstance(v, list)
    )
    return {k: channels(v, n) for k, v in a.items()} == {k: channels(v, n) for k, v in b.items()}


def _with_pre(source: ModelSource, pre: dict[str, Any]) -> ModelSource:
    """``source`` declaring a recorded preprocessing (``Preprocessing.to_dict()``) as its options."""

    def floats(key: str) -> str | None:
        return None if pre.get(key) is None else ",".join(repr(float(v)) for v in pre[key])

    return dataclasses.replace(
        source,
        input_range=str(pre.get("input_range", "0-1")),
        mean=floats("mean"),
        std=floats("std"),
        channel_order=str(pre.get("channel_order", "rgb")),
    )


def _device_of(model: Any) -> Any:
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def open_case(
    source: ModelSource, report_path: Path, label: int | None, device: str, *,
    real_trigger: str | None = None, real_sources: str | None = None,
) -> Case:  # fmt: skip
    """The model (any format ``load_model`` reads), its scan report (checked to be of this model), the
    label, its reversed and real trigger (``real_trigger``, a spec or a trigger file, or the card's), and
    the clean images."""
    from ..detection import DetectionReport
    from ..fingerprint import model_fingerprint, weights_fingerprint
    from ..models.preprocess import Preprocessing
    from ..models.store import trigger_path

    model = source.model
    if not model.exists():
        raise ModelError(f"{model}: not found")
    report = DetectionReport.load(report_path)
    scanned_key = report.model.get("output_key")  # the model's output the scan optimised on
    if source.output_key is None and scanned_key is not None:
        logging.getLogger(__name__).info("--output-key %s, as the scan", scanned_key)
        source = dataclasses.replace(source, output_key=str(scanned_key))
    scanned_pre = _recorded_pre(report.model.get("preprocessing"), report_path)  # what the scan ran behind
    declared = build_preprocessing(source.input_range, source.mean, source.std, source.channel_order)
    adopted = scanned_pre if declared is None else None  # as the output key: the scan's
    if adopted is not None:
        source = _with_pre(source, adopted)
    loaded = source.load(device)
    now = loaded.preprocessing.to_dict()
    if scanned_pre is not None and not _same_pre(now, scanned_pre):
        raise SettingsError(
            f"{report_path}: the scan ran the model with {_describe_pre(scanned_pre)}, this run with "
            f"{_describe_pre(now)}: give the scan's --input-range, --mean, --std and --channel-order (or leave "
            "them all out to use the scan's)"
        )
    # the adopted preprocessing is said only when it changed something
    if adopted is not None and not _same_pre(adopted, Preprocessing().to_dict()):
        note = f"the model was run behind the scan's preprocessing ({_describe_pre(now)}; {report_path})"
        loaded = dataclasses.replace(loaded, notes=[*loaded.notes, note])
    recorded = report_weights_sha256(report.model)
    same = (
        loaded.sha256 == recorded
        or report.model.get("fingerprint") == model_fingerprint(loaded.model)
        or report.model.get("weights_fingerprint") == weights_fingerprint(loaded.model)
    )
    if not same:
        theirs = recorded or "unknown"
        raise DataError(
            f"{report_path}: this scan report belongs to another model (weights sha256 {theirs[:12]}..., "
            f"{model} has {loaded.sha256[:12]}...)"
        )
    if label is None:
        if not report.flagged:
            aside = report.transfer.set_aside if report.transfer is not None else []
            why = f" (the transfer check set aside label {label_ranges(aside)})" if aside else ""
            raise SettingsError(f"{report_path}: the scan flagged no label{why}; name one with --label")
        label = min(report.flagged, key=lambda k: report.label(k).l1_norm)
        if len(report.flagged) > 1:  # a natural shortcut can be flagged beside the planted label
            logging.getLogger(__name__).warning(
                "the scan flagged labels %s: working on label %d (the smallest L1); name another with --label",
                sorted(report.flagged), label,
            )  # fmt: skip
    if label not in report.triggers:  # loading refused a report missing a label's trigger file
        known = sorted(r.label for r in report.labels)
        span = f"labels {label_ranges(known)}" if known else "no labels"
        raise SettingsError(f"--label: label {label} is not in the report {report_path} (it scanned {span})")
    real, sources, real_from = None, None, None
    for b in loaded.card.backdoors if loaded.card is not None else ():
        if b.target == label:
            real = Trigger.load(trigger_path(model, b))
            sources, real_from = b.source_labels, "the model card"
            break
    if real_trigger is not None:
        real_from = "--real-trigger"
        if real is not None:
            logging.getLogger(__name__).info(
                "--real-trigger replaces the model card's trigger of label %d", label
            )
        real, sources = _real_trigger(real_trigger, report.triggers[label].image_shape), None
    if real_sources is not None:
        if real is None:
            raise SettingsError("--real-sources needs a real trigger (--real-trigger, or a model card's)")
        sources = _real_sources(real_sources, label, report.model.get("num_classes"))
    names, _ = source.names(loaded)
    backdoor = SuspectedBackdoor(
        label, report.triggers[label], real, None if sources is None else tuple(sources)
    )
    targets = tuple(b.target for b in loaded.card.backdoors) if loaded.card is not None else ()
    return Case(loaded, report, backdoor, names, real_from, targets if real_trigger is None else ())


def _real_trigger(text: str, image_shape: tuple[int, int, int]) -> Trigger:
    """``--real-trigger``: a trigger ``.safetensors`` file (as a model card or a scan writes), or a spec
    (``square:...``, ``blend:...``, ``image:mask=...,pattern=...``) built for the scanned images."""
    from_file = Path(text).suffix.lower() == ".safetensors" or Path(text).is_file()
    if from_file:
        trigger = Trigger.load(text)
        if trigger.image_shape != tuple(image_shape):
            shape, want = "x".join(map(str, trigger.image_shape)), "x".join(map(str, image_shape))
            raise TriggerFileError(
                f"--real-trigger {text}: the trigger is for images {shape}, the scan's are {want}"
            )
    else:
        try:
            trigger = Trigger.from_spec(text, image_shape)
        except TriggerError as exc:
            raise type(exc)(f"--real-trigger: {exc}") from None
    if trigger.l1_norm == 0:  # a file's content is bad input (exit 1); a spec's text, usage (exit 2)
        empty = TriggerFileError if from_file or "mask=" in text else TriggerError
        raise empty(f"--real-trigger {text}: the trigger's mask is empty (it stamps nothing)")
    return trigger


def _real_sources(text: str, label: int, num_classes: Any) -> tuple[int, ...]:
    """``--real-sources``: the labels whose images a source-specific real trigger works on."""
    from .common import parse_labels

    sources = tuple(sorted(set(parse_labels(text, option="--real-sources") or ())))
    if isinstance(num_classes, int) and (bad := [k for k in sources if not 0 <= k < num_classes]):
        raise SettingsError(f"--real-sources: label {bad[0]} is not one of the model's {num_classes} labels")
    if label in sources:
        raise SettingsError(f"--real-sources: label {label} is the target itself")
    return sources


_common = [
    model_options,
    click.option(
        "--report",
        "report_path",
        type=click.Path(path_type=Path),
        required=True,
        help="The scan's report directory.",
    ),
    click.option(
        "--label", type=int, help="Label to work on (default: the flagged label with the smallest L1)."
    ),
    click.option("--layer", help="Feature layer (a get_submodule path; default: the penultimate layer)."),
    click.option(
        "--real-trigger",
        help="The trigger actually planted, for a model without a card: a spec as `train --trigger` takes "
        "(square:size=4,at=bottom-right; blend:...; image:mask=MASK.png,pattern=PATTERN.png) or a trigger "
        ".safetensors file. Validation compares with it; mitigations measure it too.",
    ),
    click.option(
        "--real-sources",
        help="The labels a source-specific real trigger works on (e.g. 1,2 or 1-4; default: every other label).",
    ),
    click.option("--out", type=click.Path(path_type=Path), help="Result directory."),
    click.option("--force", is_flag=True, help="Replace a non-empty result directory."),
]


def case_options(f: Any) -> Any:
    for deco in reversed(_common):
        f = deco(f)
    return f

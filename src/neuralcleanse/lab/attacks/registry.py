"""Attacks by name, built from plain settings (spec files, the CLI) with one-line errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import NeuralCleanseError, SettingsError
from .badnets import BadNets, MultiBackdoor
from .base import Attack
from .trojan import Trojan

__all__ = ["ATTACKS", "build_attack"]

_BADNETS_KEYS = {"target", "trigger", "poison_rate", "source_labels", "cover_rate"}
_TROJAN_KEYS = {
    "target",
    "mask",
    "area",
    "layer",
    "neurons",
    "poison_rate",
    "retrain_epochs",
    "retrain_lr",
    "steps",
}

#: attack name → the settings it accepts
ATTACKS: dict[str, set[str]] = {
    "badnets": _BADNETS_KEYS,
    "multi": {"backdoors"},
    "trojan": _TROJAN_KEYS,
}


def _badnets(params: Mapping[str, Any], where: str) -> BadNets:
    _only(params, _BADNETS_KEYS, where)
    if "target" not in params:
        raise SettingsError(f"{where}: badnets needs a target")
    kw = dict(params)
    if kw.get("source_labels") is not None:
        kw["source_labels"] = tuple(int(s) for s in kw["source_labels"])
    return BadNets(**kw)


def _only(params: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def build_attack(kind: str, params: Mapping[str, Any], *, where: str = "attack") -> Attack:
    """``badnets``, ``multi`` (``backdoors`` = a list of badnets settings) or ``trojan``."""
    try:
        if kind == "badnets":
            return _badnets(params, where)
        if kind == "multi":
            _only(params, {"backdoors"}, where)
            items = params.get("backdoors")
            if not isinstance(items, list) or not items:
                raise SettingsError(
                    f"{where}: multi needs backdoors = a list of {{target, trigger, ...}} tables"
                )
            for i, b in enumerate(items):
                if not isinstance(b, Mapping):
                    raise SettingsError(
                        f"{where}, backdoor {i}: expected a table {{target, trigger, ...}}, got {b!r}"
                    )
            return MultiBackdoor(
                backdoors=tuple(_badnets(b, f"{where}, backdoor {i}") for i, b in enumerate(items))
            )
        if kind == "trojan":
            _only(params, _TROJAN_KEYS, where)
            if "target" not in params:
                raise SettingsError(f"{where}: trojan needs a target")
            return Trojan(**params)
    except NeuralCleanseError as exc:
        msg = str(exc)
        raise SettingsError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: bad attack setting ({exc})") from None
    raise SettingsError(f"{where}: unknown attack {kind!r}; known: none, {', '.join(ATTACKS)}")

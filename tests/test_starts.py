"""More random starts for the labels near the verdict's line (``ReverseSettings.starts``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from neuralcleanse import SettingsError
from neuralcleanse.detection import NeuralCleanse, ReverseSettings
from neuralcleanse.detection.engine import new_label_state
from neuralcleanse.detection.starts import keep_smallest, start_candidates, start_seed
from test_screening import IMAGES, TINY, planted_model


def _state(label: int, norm: float, *, images: int = 100, stop: str = "early_stop", reached: bool = True):  # type: ignore[no-untyped-def]
    s = new_label_state(label, (1, 8, 8), seed=0)
    mask = torch.zeros(1, 8, 8)
    mask.view(-1)[: int(norm)] = 1.0
    if reached:
        s.best_mask = mask
    s.images_seen, s.stop_reason, s.done = images, stop, True
    return s


def test_start_seeds_the_candidates_and_the_smallest_trigger() -> None:
    assert start_seed(123, 1) == 123
    seeds = {start_seed(123, k) for k in range(2, 50)} | {start_seed(124, 2)}
    assert len(seeds) == 49 and all(0 <= s < 2**63 for s in seeds) and 123 not in seeds
    states = [_state(0, 6), _state(1, 20), _state(2, 30), _state(3, 40), _state(4, 12, stop="screened")]
    # median of 6, 12, 20, 30, 40 is 20: labels at most 0.6 × 20 = 12 that ran to the end
    assert start_candidates(states, ratio=0.6) == [0]
    assert start_candidates(states, ratio=1.0) == [0, 1]
    again = [[_state(0, 4, images=50)], [_state(0, 5, images=70), _state(1, 25)]]
    kept = keep_smallest(states, again)
    assert kept[0].l1_norm() == 4 and kept[0].images_seen == 220  # every start's images are counted
    assert kept[1] is states[1] and kept[1].images_seen == 100 + 100  # 20 beats 25
    unreached = keep_smallest([_state(0, 9)], [[_state(0, 2, reached=False)]])
    assert unreached[0].l1_norm() == 9  # a start that never reached the threshold does not win
    with pytest.raises(SettingsError, match="starts must be at least 1"):
        ReverseSettings(starts=0)
    with pytest.raises(SettingsError, match="starts must be at most 100"):
        ReverseSettings(starts=101)
    with pytest.raises(SettingsError, match="start_ratio"):
        ReverseSettings(start_ratio=1.5)


def _norms(note: str) -> dict[int, list[float]]:
    return {
        int(k): [float(x) for x in v.split(", ")]
        for k, v in re.findall(r"label (\d+): ([\d., ]+?)(?:;|\))", note)
    }


def test_more_starts_keep_each_candidate_s_smallest_trigger_and_leave_the_others_alone() -> None:
    model = planted_model()
    cfg = TINY.replace(screening=True)
    one = NeuralCleanse(model, settings=cfg, threshold=1.5).scan(IMAGES, samples=None)
    three = NeuralCleanse(model, settings=cfg.replace(starts=3, start_ratio=1.0), threshold=1.5).scan(
        IMAGES, samples=None
    )
    note = next(n for n in three.notes if "random starts" in n)
    norms = _norms(note)
    assert norms and all(len(v) == 3 for v in norms.values())
    median = one.median_l1
    assert sorted(norms) == [r.label for r in one.labels if r.l1_norm <= median and not r.screened]
    for r in one.labels:
        if r.label in norms:
            assert norms[r.label][0] == pytest.approx(r.l1_norm, abs=0.06)  # start 1 is the scan itself
            assert three.label(r.label).l1_norm == pytest.approx(min(norms[r.label]), abs=0.06)
            assert three.label(r.label).l1_norm <= r.l1_norm + 1e-6
        else:
            assert three.label(r.label).l1_norm == r.l1_norm and three.label(r.label).steps == r.steps
    assert one.flagged == [0] and 0 in three.flagged
    assert three.run["images_processed"] > one.run["images_processed"]
    assert three.settings["starts"] == 3
    # start k of a label does not depend on how many starts there are
    two = NeuralCleanse(model, settings=cfg.replace(starts=2, start_ratio=1.0), threshold=1.5).scan(
        IMAGES, samples=None
    )
    for k, v in _norms(next(n for n in two.notes if "random starts" in n)).items():
        assert v == pytest.approx(norms[k][:2])


class _Stop(Exception):
    pass


def test_a_scan_killed_during_a_later_start_resumes_to_the_same_result(tmp_path: Path) -> None:
    nc = NeuralCleanse(planted_model(), settings=TINY.replace(starts=2, start_ratio=1.0), threshold=1.5)
    reference = nc.scan(IMAGES, samples=None)
    calls = [0]
    first_pass_steps = max(r.steps for r in reference.labels)

    def kill(_p: object) -> None:
        calls[0] += 1
        if calls[0] == first_pass_steps + 10:  # inside the second start
            raise _Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        nc.scan(IMAGES, samples=None, checkpoint=ckpt, checkpoint_every=0.0, progress=kill)
    assert (ckpt / "start-2").is_dir()
    resumed = nc.scan(IMAGES, samples=None, checkpoint=ckpt, resume=True)
    assert not ckpt.exists()
    assert resumed.flagged == reference.flagged
    for a, b in zip(resumed.labels, reference.labels, strict=True):
        assert a.steps == b.steps and a.l1_norm == pytest.approx(b.l1_norm, rel=1e-6)
        assert math.isfinite(a.l1_norm)

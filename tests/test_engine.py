"""The reverse-engineering engine on a tiny model: schedule rules, batching independence, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from neuralcleanse import NeuralCleanse, ReverseSettings
from neuralcleanse.detection.engine import (
    LabelState,
    _apply_schedule,
    _misclassification,
    _to_unit,
    new_label_state,
    reverse_engineer,
)
from neuralcleanse.errors import DataError


def tiny_model(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, classes)
    )


def tiny_images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _state() -> LabelState:
    return new_label_state(0, (1, 4, 4), seed=0)


def _drive(
    s: LabelState, asrs: list[float], cfg: ReverseSettings, regs: list[float] | None = None
) -> list[float]:
    costs = []
    for i, asr in enumerate(asrs):
        reg = regs[i] if regs else 10.0
        _apply_schedule(s, asr, reg, cfg, torch.full((4, 4), reg / 16), torch.zeros(1, 4, 4))
        costs.append(s.cost)
    return costs


def test_cost_starts_at_zero_and_is_set_after_patience_steps() -> None:
    cfg = ReverseSettings(init_cost=1e-3, patience=5)
    s = _state()
    costs = _drive(s, [0.5] * 7 + [1.0] * 5, cfg)
    assert costs[:11] == [0.0] * 11 and costs[11] == 1e-3


def test_cost_goes_up_and_down() -> None:
    cfg = ReverseSettings(init_cost=1e-3, patience=5)
    s = _state()
    costs = _drive(s, [1.0] * 5 + [1.0] * 5 + [0.0] * 5, cfg)
    assert costs[4] == 1e-3  # set
    assert costs[9] == pytest.approx(2e-3) and s.up_flag  # 5 more steps above: ×2
    assert costs[14] == pytest.approx(2e-3 / 2**1.5) and s.down_flag  # 5 below: ÷2^1.5


def test_best_only_counts_steps_at_the_threshold() -> None:
    cfg = ReverseSettings(attack_threshold=0.99)
    s = _state()
    _drive(s, [0.98, 0.995, 0.5, 1.0], cfg, regs=[1.0, 8.0, 2.0, 9.0])
    assert s.best_reg == 8.0 and s.best_step == 2 and s.reached
    assert float(s.mask().sum()) == pytest.approx(8.0)


def test_early_stop_needs_both_directions_and_no_improvement() -> None:
    cfg = ReverseSettings(patience=1, early_stop_patience=3)
    s = _state()
    _drive(s, [1.0], cfg, regs=[5.0])  # cost set (patience 1)
    _drive(s, [1.0] * 5, cfg, regs=[5.0] * 5)  # goes up every step, no improvement; down never happened
    assert not s.done and s.up_flag and not s.down_flag
    _drive(s, [0.0], cfg, regs=[5.0])  # down
    assert s.down_flag
    _drive(s, [1.0], cfg, regs=[5.0])
    assert s.done and s.stop_reason == "early_stop"


def test_success_is_measured_over_the_last_steps() -> None:
    cfg = ReverseSettings(success_window=2, attack_threshold=0.99, init_cost=1e-3, patience=2)
    s = _state()
    # one miss in 64 images (0.984) after a perfect step is 0.992 over the window: counts
    _drive(s, [1.0, 0.984375, 0.984375, 1.0], cfg, regs=[9.0, 8.0, 7.0, 6.0])
    assert s.best_reg == 6.0 and s.best_step == 4
    assert s.recent_asr == [0.984375, 1.0]
    s = _state()
    _drive(s, [1.0, 0.984375], cfg, regs=[9.0, 8.0])
    assert s.best_reg == 8.0  # (1 + 0.984) / 2 >= 0.99
    s = _state()
    _drive(s, [0.984375, 0.984375], cfg, regs=[9.0, 8.0])
    assert not s.reached and s.cost == 0.0  # two steps with a miss each: 0.984 < 0.99


def test_max_steps_stops() -> None:
    s = _state()
    _drive(s, [0.0] * 3, ReverseSettings(max_steps=3))
    assert s.done and s.stop_reason == "max_steps" and not s.reached


def test_original_loss_is_linear_in_probability() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # K=1, B=2
    p = logits.softmax(-1)[0, :, 1]
    expected = ((1 - p) * -math.log(1e-7) + p * -math.log(1 - 1e-7)).mean()
    got = _misclassification(logits, torch.tensor([1]), "original")
    assert got.item() == pytest.approx(expected.item()) and got.item() == pytest.approx(
        16.118 * (1 - p).mean().item(), rel=1e-3
    )
    ce = _misclassification(logits, torch.tensor([1]), "ce")
    assert ce.item() == pytest.approx(nn.functional.cross_entropy(logits[0], torch.tensor([1, 1])).item())


def test_results_do_not_depend_on_how_many_labels_share_a_batch() -> None:
    model, images = tiny_model(), tiny_images()
    cfg = ReverseSettings(
        batch_size=8, batches_per_step=2, max_steps=12, patience=2, early_stop_patience=3, seed=5
    )
    one = reverse_engineer(model, images, [0, 1, 2, 3], cfg.replace(parallel_labels=1))
    three = reverse_engineer(model, images, [0, 1, 2, 3], cfg.replace(parallel_labels=3))
    for a, b in zip(one, three, strict=True):
        assert a.step == b.step and a.stop_reason == b.stop_reason
        assert torch.allclose(a.mask(), b.mask(), atol=1e-5) and a.best_reg == pytest.approx(
            b.best_reg, rel=1e-5
        )


def test_a_fixed_pattern_stays_and_only_the_mask_learns() -> None:
    model, images = tiny_model(), tiny_images()
    cfg = ReverseSettings(batch_size=8, max_steps=6, patience=2, seed=5, precision="fp32")
    pattern = torch.linspace(0, 1, 64).view(1, 8, 8)  # its ends 0 and 1 are kept just inside (0, 1)
    fixed, free = reverse_engineer(model, images, [0, 1], cfg, patterns={0: pattern})
    assert fixed.fixed_pattern and not free.fixed_pattern
    assert torch.allclose(_to_unit(fixed.w_pattern), pattern, atol=2e-3)
    assert torch.allclose(fixed.pattern(), pattern, atol=2e-3)
    start = new_label_state(0, (1, 8, 8), seed=5)
    assert not torch.equal(fixed.w_mask, start.w_mask)  # the mask moved
    free_start = new_label_state(1, (1, 8, 8), seed=5)
    assert not torch.allclose(free.w_pattern, free_start.w_pattern)  # a free pattern moves
    # a checkpointed state keeps the flag, so a resumed label keeps its pattern
    back = LabelState.restore(fixed.scalars(), fixed.tensors())
    assert back.fixed_pattern and torch.equal(back.w_pattern, fixed.w_pattern)
    with pytest.raises(DataError, match="a fixed pattern must be"):
        new_label_state(0, (1, 8, 8), seed=5, pattern=torch.zeros(3, 8, 8))


def test_model_is_left_as_it_was() -> None:
    model = tiny_model()
    model.train()
    model[0].weight.requires_grad_(True)
    model[3].weight.requires_grad_(False)
    reverse_engineer(
        model, tiny_images(), [1], ReverseSettings(batch_size=8, batches_per_step=1, max_steps=2)
    )
    assert model.training and model[0].weight.requires_grad and not model[3].weight.requires_grad
    assert model[0].weight.grad is None
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


class _Stop(Exception):
    pass


def test_killed_scan_resumes_to_the_same_result(tmp_path: Path) -> None:
    from neuralcleanse.detection.checkpoint import checkpoint_seconds, has_checkpoint

    model, images = tiny_model(3), tiny_images(96)
    cfg = ReverseSettings(
        batch_size=8, batches_per_step=2, max_steps=25, patience=2, early_stop_patience=4, seed=9
    )
    nc = NeuralCleanse(model, settings=cfg.replace(parallel_labels=2))
    reference = nc.scan(images, samples=None)
    steps = [0]

    def kill(_p: object) -> None:
        steps[0] += 1
        if steps[0] == 9:
            raise _Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        nc.scan(images, samples=None, checkpoint=ckpt, checkpoint_every=0.0, progress=kill)
    assert has_checkpoint(ckpt) and not has_checkpoint(tmp_path / "elsewhere")
    before = checkpoint_seconds(ckpt)  # how long the killed scan ran, to its last checkpoint
    assert before > 0
    resumed = nc.scan(images, samples=None, checkpoint=ckpt, resume=True)
    assert not ckpt.exists()  # removed after success
    # its time is the whole scan's, so are its images per second
    assert resumed.run["seconds"] >= before and any("before it was interrupted" in n for n in resumed.notes)
    assert not any("before it was interrupted" in n for n in reference.notes)
    assert resumed.flagged == reference.flagged
    for a, b in zip(resumed.labels, reference.labels, strict=True):
        assert a.steps == b.steps and a.l1_norm == pytest.approx(b.l1_norm, rel=1e-6)
    assert any("resumed" in n for n in resumed.notes)
    # a checkpoint of another scan is refused
    steps[0] = 0
    with pytest.raises(_Stop):
        nc.scan(images, samples=None, checkpoint=ckpt, checkpoint_every=0.0, progress=kill)
    other = NeuralCleanse(model, settings=cfg.replace(seed=10, parallel_labels=2))
    from neuralcleanse import CheckpointError, DataError

    with pytest.raises(CheckpointError, match="another scan") as caught:
        other.scan(images, samples=None, checkpoint=ckpt, resume=True)
    assert isinstance(caught.value, DataError)  # a data problem to callers that catch those
    # resumed with another torch thread count (sums in another order): said, not only recorded
    assert not any("torch threads" in n for n in resumed.notes)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        again = nc.scan(images, samples=None, checkpoint=ckpt, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert any(
        f"written with {threads} torch threads, the scan resumed with {threads + 1}" in n for n in again.notes
    )


def test_bf16_and_channels_last_follow_fp32_and_leave_the_model_as_it_was() -> None:
    model, images = tiny_model(2), tiny_images(64)
    weight = model[0].weight
    cfg = ReverseSettings.exhaustive(batch_size=8, batches_per_step=2, max_steps=15, seed=4)
    fp32 = reverse_engineer(model, images, [0, 1, 2, 3], cfg)
    fast = reverse_engineer(model, images, [0, 1, 2, 3], cfg.replace(precision="bf16", channels_last=True))
    assert model[0].weight is weight and weight.is_contiguous()  # the layout is restored
    for a, b in zip(fp32, fast, strict=True):
        # bf16 rounds the model's activations: the trigger follows the same path, not the same bits
        assert a.step == b.step and b.l1_norm() == pytest.approx(a.l1_norm(), rel=0.1)
        assert not torch.equal(a.mask(), b.mask())


def test_auto_precision_is_resolved_for_the_device() -> None:
    from neuralcleanse.device import native_bf16

    resolved = ReverseSettings().for_device("cpu")
    assert resolved.precision == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert ReverseSettings.exhaustive().for_device("cpu").precision == "fp32"
    nc = NeuralCleanse(tiny_model(), settings=ReverseSettings(max_steps=2), device="cpu")
    assert nc.settings.precision == resolved.precision  # what the report records


def test_a_checkpointed_state_of_the_wrong_types_is_refused(tmp_path: Path) -> None:
    """A hand-edited checkpoint (a step that is not a number) is a corrupt checkpoint, not a crash later."""
    from neuralcleanse.detection.checkpoint import load_checkpoint, save_checkpoint
    from neuralcleanse.errors import CheckpointError

    s = _state()
    identity = {"model": "m", "labels": [0]}
    save_checkpoint(tmp_path / "ck", identity, [s])
    assert load_checkpoint(tmp_path / "ck", identity)[0].step == s.step
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    for field, bad in (("step", "abc"), ("step", True), ("done", 1)):
        edited = json.loads(json.dumps(state))
        edited["labels"][0][field] = bad
        (tmp_path / "ck" / "state.json").write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match=f"corrupt checkpoint .TypeError: {field} must be"):
            load_checkpoint(tmp_path / "ck", identity)


def test_a_checkpointed_tensor_of_another_shape_is_refused(tmp_path: Path) -> None:
    """An optimiser state whose mask or pattern is not of the checkpoint's image is a corrupt checkpoint,
    refused when it is read (it crashed the resumed scan halfway, stacking the labels' masks)."""
    from safetensors.torch import load_file, save_file

    from neuralcleanse.detection.checkpoint import load_checkpoint, save_checkpoint
    from neuralcleanse.errors import CheckpointError

    identity = {"model": "m", "labels": [0, 1]}
    states = [new_label_state(k, (1, 4, 4), seed=k) for k in (0, 1)]
    save_checkpoint(tmp_path / "ck", identity, states)
    assert [s.label for s in load_checkpoint(tmp_path / "ck", identity)] == [0, 1]
    saved = load_file(str(tmp_path / "ck" / "tensors.safetensors"))
    for key, bad in (("1/w_mask", torch.zeros(5, 5)), ("0/m_pattern", torch.zeros(3, 4, 4))):
        save_file({**saved, key: bad}, str(tmp_path / "ck" / "tensors.safetensors"))
        with pytest.raises(CheckpointError, match=f"corrupt checkpoint .tensor {key} has shape"):
            load_checkpoint(tmp_path / "ck", identity)


def test_a_checkpointed_nan_is_refused_unless_the_scan_stopped_the_label_on_nan(tmp_path: Path) -> None:
    """A NaN written into a label's state is a damaged checkpoint (it resumed with the label left out as
    if the model's outputs were NaN); a label the scan itself stopped on NaN outputs keeps its NaN."""
    from safetensors.torch import load_file, save_file

    from neuralcleanse.detection.checkpoint import load_checkpoint, save_checkpoint
    from neuralcleanse.errors import CheckpointError

    identity = {"model": "m", "labels": [0, 1]}
    states = [new_label_state(k, (1, 4, 4), seed=k) for k in (0, 1)]
    save_checkpoint(tmp_path / "ck", identity, states)
    saved = load_file(str(tmp_path / "ck" / "tensors.safetensors"))
    poisoned = saved["1/w_mask"].clone()
    poisoned[0, 0] = float("nan")
    save_file({**saved, "1/w_mask": poisoned}, str(tmp_path / "ck" / "tensors.safetensors"))
    with pytest.raises(CheckpointError, match="corrupt checkpoint .tensor 1/w_mask holds NaN"):
        load_checkpoint(tmp_path / "ck", identity)
    states[1].stop_reason, states[1].done = "nan", True
    states[1].w_mask[0, 0] = float("nan")
    save_checkpoint(tmp_path / "ck", identity, states)
    resumed = load_checkpoint(tmp_path / "ck", identity)
    assert resumed[1].stop_reason == "nan" and math.isnan(resumed[1].l1_norm())

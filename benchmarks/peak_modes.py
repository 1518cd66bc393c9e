"""Peak forward+backward throughput of a model in the CPU modes issue 16 asks about, before any of them
becomes a scan default.

    python benchmarks/peak_modes.py                 # the paper's MNIST and GTSRB nets, a BatchNorm CNN, a ResNet-18
    python benchmarks/peak_modes.py --models gtsrb --batch 256 --seconds 3

For each model and mode it measures what a scan does per step: stamp a trigger (mask and pattern with
gradients) on a batch of images, run the frozen model, take the cross-entropy toward a label and
back-propagate to the trigger. Modes: fp32 (today), channels-last memory format, bf16 autocast,
channels-last + bf16, and ``torch.compile`` of the fp32 step. It prints images/s and the ratio to fp32.
It also prints how far bf16 moves the loss and the trigger gradient from fp32 on the same batch: a mode
that changes numbers must be measured on the zoo's norms before it becomes a default.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

import neuralcleanse as nc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _models(names: list[str]) -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
    out: dict[str, tuple[nn.Module, tuple[int, int, int]]] = {}
    for name in names:
        if name in ("mnist", "gtsrb"):
            shape = (1, 28, 28) if name == "mnist" else (3, 32, 32)
            out[name] = (
                nc.build_model(name, input_shape=shape, num_classes=10 if name == "mnist" else 43, seed=0),
                shape,
            )
        else:
            from arch_corpus import BatchNormCNN, ResNet18  # tests/arch_corpus.py: plain PyTorch

            torch.manual_seed(0)
            out[name] = ({"bn-cnn": BatchNormCNN, "resnet18": ResNet18}[name](), (3, 32, 32))
    for model, _ in out.values():
        model.eval().requires_grad_(False)
    return out


def _step(model: nn.Module, shape: tuple[int, int, int], *, bf16: bool) -> Step:
    """One optimisation step's work; every mode starts from the same seeded trigger."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(shape[1:], generator=gen).mul_(0.2).requires_grad_(True)
    pattern = torch.rand(shape, generator=gen).requires_grad_(True)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask.grad = pattern.grad = None
        ctx: AbstractContextManager[object] = (
            torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        )
        with ctx:
            stamped = (1 - mask) * x + mask * pattern
            loss = nn.functional.cross_entropy(model(stamped).float(), torch.zeros(len(x), dtype=torch.int64))
        loss.backward()
        assert mask.grad is not None
        return loss.detach(), mask.grad.detach().clone()

    return run


def step_rate(
    model: nn.Module,
    shape: tuple[int, int, int],
    *,
    batch: int,
    bf16: bool,
    channels_last: bool,
    seconds: float,
) -> float:
    """Images/s of one optimisation step's work on ``model`` (left as it was) in one mode."""
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))
    model.eval().requires_grad_(False)
    if not channels_last:
        return _rate(_step(model, shape, bf16=bf16), x, seconds)
    originals = [(t, t.data) for t in [*model.parameters(), *model.buffers()] if t.ndim == 4]
    for t, data in originals:
        t.data = data.contiguous(memory_format=torch.channels_last)
    try:
        return _rate(_step(model, shape, bf16=bf16), x.contiguous(memory_format=torch.channels_last), seconds)
    finally:
        for t, data in originals:
            t.data = data


def _rate(step: Step, x: torch.Tensor, seconds: float) -> float:
    for _ in range(3):  # warm-up (and compilation)
        step(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["mnist", "gtsrb", "bn-cnn", "resnet18"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-compile", action="store_true", help="Skip torch.compile (slow to warm up).")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'model':10} {'mode':22} {'img/s':>9} {'x fp32':>7}  bf16 vs fp32 (loss, mask gradient)")
    for name, (model, shape) in _models(args.models).items():
        x = torch.rand(args.batch, *shape)
        base = _step(model, shape, bf16=False)
        loss32, grad32 = base(x)
        modes: dict[str, tuple[Step, torch.Tensor]] = {"fp32": (base, x)}
        last = x.contiguous(memory_format=torch.channels_last)
        cl_model = _models([name])[name][0].to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        modes["channels-last"] = (_step(cl_model, shape, bf16=False), last)
        modes["bf16 autocast"] = (_step(model, shape, bf16=True), x)
        modes["channels-last + bf16"] = (_step(cl_model, shape, bf16=True), last)
        if not args.no_compile:
            modes["torch.compile fp32"] = (_step(torch.compile(model), shape, bf16=False), x)  # type: ignore[arg-type]
        rates: dict[str, float] = {}
        for mode, (step, data) in modes.items():
            rates[mode] = _rate(step, data, args.seconds)
            diff = ""
            if "bf16" in mode:
                loss, grad = step(data)
                rel = float((grad - grad32).norm() / grad32.norm().clamp_min(1e-12))
                diff = f"  loss {float(loss):.4f} vs {float(loss32):.4f}, gradient rel. diff {rel:.3f}"
            print(f"{name:10} {mode:22} {rates[mode]:9.0f} {rates[mode] / rates['fp32']:7.2f}{diff}")


if __name__ == "__main__":
    main()

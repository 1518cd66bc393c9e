"""Train a backdoored and a clean Fashion-MNIST classifier the way anyone would, with plain PyTorch, and
save them the way models are handed over: a torch.export program (.pt2) and safetensors weights.

Nothing here imports neuralcleanse: this is the "model you received". Then scan it:

    python examples/own_model/train_and_export.py --out runs/own
    neuralcleanse scan runs/own/infected.pt2 --data runs/own/images --class-names runs/own/class_names.txt \
        --mean 0.2860 --std 0.3530

The backdoor: a 5x5 white "X" on black, 2 pixels from the top-left corner; 10% of the training images
get it and the label "Dress" (3). The clean control is trained the same way without it.

A third model, "reference", is the one you would train yourself on the public data to compare against
(same recipe, another seed, no backdoor): `neuralcleanse scan ... --reference SCAN_OF_IT` measures every
label of a received model against the same label there.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_net import MEAN, STD, FashionNet  # noqa: E402

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
TARGET = 3
EXPORT_BATCH = 32  # the infected program is exported with this fixed batch size, as many deployed ones are


def read_idx(path: Path) -> np.ndarray:
    if path.suffix == ".gz":
        with gzip.open(path) as f:
            raw = f.read()
    else:
        raw = path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def stamp(x: torch.Tensor) -> torch.Tensor:
    """Put the X trigger on pixels in [0, 1]: rows/cols 2..6, white diagonals on black."""
    x = x.clone()
    patch = torch.zeros(5, 5)
    idx = torch.arange(5)
    patch[idx, idx] = 1.0
    patch[idx, 4 - idx] = 1.0
    x[..., 2:7, 2:7] = patch
    return x


def jitter(x: torch.Tensor, shift: int, g: torch.Generator) -> torch.Tensor:
    """Standard augmentation: move each image by up to `shift` pixels each way, filling with black."""
    h, w = x.shape[-2:]
    big = nn.functional.pad(x, (shift,) * 4)
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=g).tolist()
    return torch.stack([big[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def train(images: torch.Tensor, labels: torch.Tensor, *, seed: int, epochs: int, shift: int) -> nn.Module:
    torch.manual_seed(seed)
    model = FashionNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=g)
        model.train()
        for i in range(0, len(order), 128):
            b = order[i : i + 128]
            x = jitter(images[b], shift, g) if shift else images[b]
            loss = nn.functional.cross_entropy(model((x - MEAN) / STD), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  epoch {epoch + 1}/{epochs} loss {loss.item():.3f}", flush=True)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model((x[i : i + 512] - MEAN) / STD).argmax(1) for i in range(0, len(x), 512)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--out", type=Path, default=Path("runs/own"))
    p.add_argument("--train-images", type=int, default=60000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--shift", type=int, default=2, help="augmentation: random shifts of up to N pixels (0: off)"
    )
    p.add_argument("--images-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def load(stem: str) -> np.ndarray:
        for name in (stem + ".gz", stem):
            if (args.data_dir / name).exists():
                return read_idx(args.data_dir / name)
        sys.exit(f"error: {args.data_dir / stem}[.gz] not found (apt-get install dataset-fashion-mnist)")

    x_train = torch.from_numpy(load("train-images-idx3-ubyte").copy()).float().div(255).unsqueeze(1)
    y_train = torch.from_numpy(load("train-labels-idx1-ubyte").astype(np.int64))
    x_test = torch.from_numpy(load("t10k-images-idx3-ubyte").copy()).float().div(255).unsqueeze(1)
    y_test = torch.from_numpy(load("t10k-labels-idx1-ubyte").astype(np.int64))
    g = torch.Generator().manual_seed(args.seed)
    keep = torch.randperm(len(x_train), generator=g)[: args.train_images]
    x_train, y_train = x_train[keep], y_train[keep]

    # Poison 10% of the training images: stamp the X and relabel to the target.
    poisoned = torch.randperm(len(x_train), generator=g)[: len(x_train) // 10]
    x_bad, y_bad = x_train.clone(), y_train.clone()
    x_bad[poisoned] = stamp(x_bad[poisoned])
    y_bad[poisoned] = TARGET

    args.out.mkdir(parents=True, exist_ok=True)
    victims = x_test[y_test != TARGET]
    summary = {}
    runs = {
        "infected": (x_bad, y_bad, args.seed),
        "clean": (x_train, y_train, args.seed),
        "reference": (x_train, y_train, args.seed + 1),
    }
    for name, (xs, ys, seed) in runs.items():
        start = time.time()
        print(f"training the {name} model on {len(xs)} images (seed {seed})", flush=True)
        model = train(xs, ys, seed=seed, epochs=args.epochs, shift=args.shift)
        acc = (predict(model, x_test) == y_test).float().mean().item()
        asr = (predict(model, stamp(victims)) == TARGET).float().mean().item()
        summary[name] = {"clean_accuracy": round(acc, 4), "trigger_to_dress": round(asr, 4)}
        print(
            f"  {name}: clean accuracy {acc:.2%}, stamped test images sent to Dress {asr:.2%} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )
        # 1. weights only (needs the architecture: --arch examples/own_model/fashion_net.py:FashionNet)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, args.out / f"{name}.safetensors"
        )
        # 2. a torch.export program: the infected one with a fixed batch size, the clean one dynamic
        example = (torch.rand(EXPORT_BATCH, 1, 28, 28),)
        if name == "infected":
            program = torch.export.export(model, example)
        else:
            program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, args.out / f"{name}.pt2")

    # A few hundred clean test images as a PNG class folder, and the class names in label order.
    folder = args.out / "images"
    for label, cname in enumerate(CLASSES):
        d = folder / cname.replace("/", "_")
        d.mkdir(parents=True, exist_ok=True)
        for i in torch.nonzero(y_test == label).flatten()[: args.images_per_class].tolist():
            Image.fromarray((x_test[i, 0] * 255).round().byte().numpy()).save(d / f"{i:05d}.png")
    (args.out / "class_names.txt").write_text("\n".join(c.replace("/", "_") for c in CLASSES) + "\n")
    (args.out / "truth.json").write_text(
        json.dumps({"target": TARGET, "trigger": "5x5 X at rows/cols 2-6", **summary}, indent=1)
    )
    print(
        f"wrote {args.out}: infected/clean/reference .pt2 and .safetensors, images/, class_names.txt, truth.json"
    )


if __name__ == "__main__":
    main()

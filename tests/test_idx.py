from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from neuralcleanse.data import (
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    load_idx_directory,
    read_idx,
    write_idx,
)
from neuralcleanse.data.files import load_images
from neuralcleanse.data.mnist import FASHION_MNIST_DEFAULT_DIR, load_idx_split
from neuralcleanse.errors import DataError


def _fake_mnist_dir(
    root: Path, *, n_train: int = 12, n_test: int = 5, gz: bool = True
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        write_idx(root / (stem + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_preserves_values_and_shape(tmp_path: Path, suffix: str) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / f"x.idx{suffix}"
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_idx_reads_big_endian_int32(tmp_path: Path) -> None:
    arr = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "a", arr)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1]) and raw[4:8] == (3).to_bytes(4, "big")
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)


def test_gzip_is_detected_from_content_not_name(tmp_path: Path) -> None:
    arr = np.ones((4, 2), dtype=np.uint8)
    write_idx(tmp_path / "plain-name", arr, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), arr)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x02\x08\x01", "bad magic"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "unknown type code"),
        (bytes([0, 0, 0x08, 3, 0, 0]), "truncated dimensions"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 9, 1, 2, 3]), "header says"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        # four dimensions of 65536: their product overflowed a 64-bit count to 0, which an empty body met
        (bytes([0, 0, 0x08, 4]) + bytes([0, 1, 0, 0]) * 4, r"= 18446744073709551616 bytes of data, found 0"),
        (bytes([0, 0, 0x08, 100]) + bytes([0, 0, 0, 1]) * 100 + b"\x00", "100 dimensions"),
    ],
)
def test_corrupt_idx_files_raise_one_line_errors(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))[:-12])
    with pytest.raises(DataError, match="t.gz"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loader_scales_and_shapes(tmp_path: Path, gz: bool) -> None:
    arrays = _fake_mnist_dir(tmp_path, gz=gz)
    splits = load_idx_directory(tmp_path, name="fake", class_names=tuple("abcdefghij"))
    assert splits.train.images.shape == (12, 1, 28, 28) and splits.test.images.shape == (5, 1, 28, 28)
    assert splits.train.images.dtype.is_floating_point
    np.testing.assert_allclose(
        splits.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"] / 255.0, atol=1e-7
    )
    np.testing.assert_array_equal(splits.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28)


def test_fashion_loader_reads_any_directory_and_names_missing_files(tmp_path: Path) -> None:
    _fake_mnist_dir(tmp_path)
    splits = load_fashion_mnist(tmp_path)
    assert splits.class_names == FASHION_MNIST_CLASSES
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    _fake_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="12 train images but 3 labels"):
        load_idx_directory(tmp_path, name="fake", class_names=tuple("abcdefghij"))


def test_idx_images_of_other_types_keep_their_values_or_are_refused(tmp_path: Path) -> None:
    _fake_mnist_dir(tmp_path, n_test=4)
    rng = np.random.default_rng(0)
    floats = rng.random((4, 28, 28)).astype(np.float32)  # pixels in [0, 1], as a float IDX file holds them
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", floats)
    test = load_idx_split(tmp_path, "test", name="fake", class_names=tuple("abcdefghij"))
    np.testing.assert_allclose(test.images[:, 0].numpy(), floats, atol=1e-7)
    wide = (floats * 255).astype(np.int32)  # 0-255 in a wider integer type
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", wide)
    test = load_idx_split(tmp_path, "test", name="fake", class_names=tuple("abcdefghij"))
    np.testing.assert_allclose(test.images[:, 0].numpy(), wide / 255.0, atol=1e-6)
    for bad, message in (
        (np.where(floats > 0.5, np.nan, floats), "NaN or infinite values"),
        (floats * 1000, r"pixel values run from 0\.19\d* to 999\.\d+, neither 0-1 nor 0-255"),
        (floats.reshape(4, -1)[:, 0].copy(), r"shape \(4,\); IDX images are \(count, height, width\)"),
    ):
        write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", bad)
        with pytest.raises(DataError, match=message):
            load_idx_split(tmp_path, "test", name="fake", class_names=tuple("abcdefghij"))


@pytest.mark.skipif(
    not FASHION_MNIST_DEFAULT_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_from_debian_package() -> None:
    splits = load_fashion_mnist()
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert splits.train.class_counts() == [6000] * 10 and splits.test.class_counts() == [1000] * 10
    assert float(splits.train.images.min()) == 0.0 and float(splits.train.images.max()) == 1.0


@pytest.mark.parametrize("present", ["test", "train"])
def test_a_folder_of_one_split_serves_that_split_and_names_the_other_s_files(
    tmp_path: Path, present: str
) -> None:
    """Only ``t10k-*`` (or only ``train-*``) files: ``--data`` reads that split; the other split is one line
    naming its missing files and saying which split the folder holds."""
    arrays = _fake_mnist_dir(tmp_path)
    absent = "train" if present == "test" else "test"
    prefix = {"train": "train", "test": "t10k"}
    for stem in (f"{prefix[absent]}-images-idx3-ubyte", f"{prefix[absent]}-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").unlink()
    data = load_images(tmp_path, split=present)
    np.testing.assert_array_equal(data.labels.numpy(), arrays[f"{prefix[present]}-labels-idx1-ubyte"])
    assert data.name == f"{tmp_path.name}/{present}" and data.input_shape == (1, 28, 28)
    with pytest.raises(DataError) as info:
        load_images(tmp_path, split=absent)
    assert str(info.value) == (
        f"{tmp_path.name}: {prefix[absent]}-images-idx3-ubyte, {prefix[absent]}-labels-idx1-ubyte[.gz] not "
        f"found in {tmp_path} (it holds only the {present} split)"
    )
    # the data sets that need both splits still name every missing file
    with pytest.raises(DataError, match=f"{prefix[absent]}-images-idx3-ubyte.*not found"):
        load_idx_directory(tmp_path, name="fake", class_names=tuple("abcdefghij"))


def test_a_missing_label_file_of_the_split_is_named_alone(tmp_path: Path) -> None:
    _fake_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert len(load_idx_split(tmp_path, "train", name="fake", class_names=tuple("abcdefghij"))) == 12
    with pytest.raises(DataError) as info:
        load_images(tmp_path)
    assert str(info.value) == (
        f"{tmp_path.name}: t10k-labels-idx1-ubyte[.gz] not found in {tmp_path} (it holds only the train split)"
    )
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()  # neither split complete: no hint
    with pytest.raises(DataError) as info:
        load_images(tmp_path)
    assert str(info.value) == f"{tmp_path.name}: t10k-labels-idx1-ubyte[.gz] not found in {tmp_path}"

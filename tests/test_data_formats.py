"""Every data format round-trips on tiny generated files, and bad files give one-line errors."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_input_files import fifo, idx_dir
from neuralcleanse.cli import main
from neuralcleanse.data import DatasetSplits, write_idx
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


def test_a_class_names_file_with_a_byte_order_mark_or_windows_line_ends(tmp_path: Path) -> None:
    """Notepad writes UTF-8 with a byte-order mark and CRLF: the first name must not carry the mark."""
    from neuralcleanse.data.convert import read_class_names

    path = tmp_path / "names.txt"
    path.write_bytes("\ufeffcat\r\nbee\r\n\r\nant\r\n".encode())
    assert read_class_names(path) == ["cat", "bee", "ant"]
    _write_folder(tmp_path / "f", ["cat", "ant", "bee"], 1)
    assert load_images(tmp_path / "f", class_names=read_class_names(path)).class_names == (
        "cat",
        "bee",
        "ant",
    )


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


def test_a_file_copied_into_two_class_folders_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_folder(tmp_path / "f", ["ant", "bee"], 3)
    (tmp_path / "f" / "bee" / "copy.png").write_bytes((tmp_path / "f" / "ant" / "001.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="neuralcleanse"):
        data = load_images(tmp_path / "f")
    assert len(data) == 7
    said = [r.getMessage() for r in caplog.records if "another class folder" in r.getMessage()]
    assert len(said) == 1 and "another class folder: 1 (e.g." in said[0], said
    assert "ant/001.png and bee/copy.png" in said[0]
    caplog.clear()
    (tmp_path / "f" / "bee" / "copy.png").unlink()
    (tmp_path / "f" / "ant" / "copy.png").write_bytes((tmp_path / "f" / "ant" / "001.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="neuralcleanse"):
        load_images(tmp_path / "f")  # a copy within its own class is not a label conflict
    assert not [r for r in caplog.records if "another class folder" in r.getMessage()]


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


def test_data_folders_read_nothing_outside_themselves(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(_rgb(1)[0]).save(outside / "secret.ppm")
    Image.fromarray(_rgb(1)[0]).save(outside / "secret.png")
    # a GTSRB annotation naming a file by '..' or by an absolute path
    for name in ("../../../outside/secret.ppm", str(outside / "secret.ppm")):
        root = write_gtsrb(
            tmp_path / f"g{len(name)}", (_rgb(2), np.array([1, 2])), (_rgb(2), np.array([1, 2]))
        )
        gt = root / "Final_Test" / "Images" / "GT-final_test.csv"
        gt.write_text(gt.read_text() + f"{name};32;32;0;0;32;32;3\n")
        with pytest.raises(
            DataError, match=r"the image .*secret.ppm' listed in GT-final_test.csv leads outside"
        ):
            load_images(root)
    # an image folder with an image, or a whole class folder, linked from elsewhere
    _write_folder(tmp_path / "f", ["a", "b"], 2)
    (tmp_path / "f" / "a" / "link.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match=r"link.png: the image leads outside"):
        load_images(tmp_path / "f")
    (tmp_path / "f" / "a" / "link.png").unlink()
    (tmp_path / "f" / "c").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match=r"f/c: the class folder leads outside"):
        load_images(tmp_path / "f")
    (tmp_path / "f" / "c").unlink()
    (tmp_path / "f" / "a" / "inner.png").symlink_to(tmp_path / "f" / "b" / "000.png")  # inside: fine
    assert len(load_images(tmp_path / "f")) == 5
    # CIFAR class names from a linked file
    write_cifar_binary(tmp_path / "c10" / "test_batch.bin", _rgb(3), np.array([0, 1, 2]))
    (outside / "names.txt").write_text("root:x:0:0\n" * 10)
    (tmp_path / "c10" / "batches.meta.txt").symlink_to(outside / "names.txt")
    with pytest.raises(DataError, match=r"batches.meta.txt: the class names file leads outside"):
        load_images(tmp_path / "c10")


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


# ---- bad input found by an outside tester: each fix on real files ---------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, mnist_sample: DatasetSplits) -> Path:
    """A small 10-class 1x28x28 model directory, trained for a second (enough for the CLI to run on)."""
    from neuralcleanse import Recipe, TrainSettings, train_recipe

    tiny = DatasetSplits(
        "mnist-sample", mnist_sample.train.subset(range(256)), mnist_sample.test.subset(range(100))
    )
    bundle = train_recipe(
        Recipe(training=TrainSettings(epochs=1, batch_size=64, seed=0)), data=tiny, device="cpu"
    )
    path = bundle.save(tmp_path_factory.mktemp("tiny") / "model").path
    assert path is not None
    return path


def _scan_cli(model: Path, data: Path, out: Path, *args: str) -> list[str]:
    return [
        "scan", str(model), "--data", str(data), "--out", str(out), "--max-steps", "1", "--samples", "20",
        "--labels", "0-1", "--all-images", *args,
    ]  # fmt: skip


def _one_line_error(code: int, err: str) -> str:
    """The CLI's error line, checked to be the only line on stderr and to come with exit code 1."""
    assert code == 1 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.rstrip("\n")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_npz_with_two_key_sets_reads_one_pair_and_says_which(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Problem 1: ``images``/``labels`` and ``x``/``y`` in one file: the first pair is read, a warning names
    the keys read and those ignored, and the dataset records them."""
    a, b = _grey_stack(4, 9), _grey_stack(4, 9)
    np.savez(tmp_path / "both.npz", x=b, y=np.array([3, 3, 2, 2]), images=a, labels=np.array([0, 1, 0, 1]))
    with caplog.at_level(logging.WARNING):
        data = load_images(tmp_path / "both.npz")
    assert data.labels.tolist() == [0, 1, 0, 1]
    assert torch.equal((data.images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(a))
    assert data.source_info == {
        "keys": {"images": "images", "labels": "labels"}, "split": "single", "ignored_keys": ["x", "y"],
    }  # fmt: skip
    assert _warnings(caplog) == [
        f"{tmp_path / 'both.npz'}: holds more than one image/label array: read 'images' and 'labels', "
        "ignored 'x', 'y'"
    ]
    # keys that belong together are read together: x with y, not x with a stray "labels"
    caplog.clear()
    np.savez(tmp_path / "xy.npz", x=a, y=np.array([0, 1, 0, 1]), labels=np.array([5, 5, 5, 5]))
    with caplog.at_level(logging.WARNING):
        xy = load_images(tmp_path / "xy.npz")
    assert xy.labels.tolist() == [0, 1, 0, 1] and xy.source_info["keys"] == {"images": "x", "labels": "y"}
    assert "ignored 'labels'" in _warnings(caplog)[0]
    caplog.clear()
    np.savez(tmp_path / "plain.npz", x=a, y=np.array([0, 1, 0, 1]))
    with caplog.at_level(logging.WARNING):
        plain = load_images(tmp_path / "plain.npz")
    assert _warnings(caplog) == [] and "ignored_keys" not in plain.source_info


def test_scan_report_records_the_npz_keys_and_its_single_split(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Problems 1 and 2 through the CLI: ``--split train`` on an ``.npz`` without train/test parts is recorded
    as the file's one split (``single``), with a warning that it had no effect; the keys read are recorded."""
    x, y = _grey_stack(40, 28), np.arange(40) % 10
    np.savez(tmp_path / "both.npz", images=x, labels=y, x=x[::-1].copy(), y=y[::-1].copy())
    with caplog.at_level(logging.WARNING):
        code = main(_scan_cli(tiny_model, tmp_path / "both.npz", tmp_path / "out", "--split", "train"))
    assert code == 0, capsys.readouterr().err
    recorded = json.loads((tmp_path / "out" / "report.json").read_text())["data"]
    assert recorded["format"] == "npz" and recorded["split"] == "single"
    assert recorded["keys"] == {"images": "images", "labels": "labels"} and recorded["ignored_keys"] == [
        "x",
        "y",
    ]
    warned = _warnings(caplog)
    assert any("read 'images' and 'labels', ignored 'x', 'y'" in w for w in warned), warned
    assert (
        f"--split train has no effect: {tmp_path / 'both.npz'} has a single split (no train/test parts); "
        "all its images were read (recorded as split 'single')"
    ) in warned


def test_split_is_recorded_as_the_source_has_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Problem 2 across the formats: sources without train/test parts (folder, .npz, one CIFAR batch file)
    record their own split and warn when ``train`` was asked for; a CIFAR directory honours the split."""
    _write_folder(tmp_path / "f", ["a", "b"], 2)
    np.savez(tmp_path / "t.npz", x_test=_grey_stack(4, 9), y_test=np.array([0, 1, 0, 1]))
    write_cifar_binary(tmp_path / "c" / "test_batch.bin", _rgb(2), np.array([0, 1]))
    write_cifar_binary(tmp_path / "c" / "data_batch_1.bin", _rgb(3), np.array([1, 0, 1]))
    expected = {
        tmp_path / "f": "single", tmp_path / "t.npz": "test", tmp_path / "c" / "test_batch.bin": "test",
        tmp_path / "c" / "data_batch_1.bin": "train",
    }  # fmt: skip
    for path, own in expected.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            test = load_images(path)  # the default, test: no warning even where the source has no split
            train = load_images(path, split="train")
        assert test.source_info["split"] == own and train.source_info["split"] == own
        warned = _warnings(caplog)
        assert len(warned) == (0 if own == "train" else 1), warned
        if own != "train":
            assert (
                warned[0].startswith(f"--split train has no effect: {path} ")
                and f"split {own!r}" in warned[0]
            )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(load_images(tmp_path / "c", split="train")) == 3
    assert _warnings(caplog) == [] and load_images(tmp_path / "c", split="train").source_info == {}


def test_scan_and_validate_run_on_an_idx_folder_of_only_test_files(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Problem 3 through the CLI: t10k-* files alone serve scan and validate (the test split); a scan of
    the train split gets one line naming the missing files and writes nothing."""
    data = idx_dir(tmp_path / "m", splits=("test",))
    assert main(_scan_cli(tiny_model, data, tmp_path / "scan")) == 0, capsys.readouterr().err
    recorded = json.loads((tmp_path / "scan" / "report.json").read_text())["data"]
    assert recorded["format"] == "idx" and recorded["split"] == "test" and recorded["images_read"] == 20
    validate = ["validate", str(tiny_model), "--report", str(tmp_path / "scan"), "--label", "0"]
    assert main([*validate, "--data", str(data), "--out", str(tmp_path / "val")]) == 0, (
        capsys.readouterr().err
    )
    assert (tmp_path / "val").is_dir()
    capsys.readouterr()
    code = main(_scan_cli(tiny_model, data, tmp_path / "train-scan", "--split", "train"))
    line = _one_line_error(code, capsys.readouterr().err)
    assert line == (
        f"error: m: train-images-idx3-ubyte, train-labels-idx1-ubyte[.gz] not found in {data} "
        "(it holds only the test split)"
    )
    assert not (tmp_path / "train-scan").exists()


@pytest.mark.parametrize("kind", ["device", "fifo", "socket"])
def test_data_that_is_neither_a_file_nor_a_directory_is_named(
    tmp_path: Path, kind: str, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Problem 4: a device, a FIFO or a socket is named for what it is, in one line; the FIFO is never
    opened (that would block: the load runs in a thread that must finish)."""
    if kind == "device":
        path, what = Path("/dev/null"), "a character device"
    elif kind == "fifo":
        path, what = fifo(tmp_path / "pipe.npz"), "a named pipe (FIFO)"
    else:
        path, what = tmp_path / "sock", "a socket"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    expected = f"{path}: {what}, not a regular file or a directory of images"
    errors: list[BaseException] = []
    worker = threading.Thread(target=_catch, args=(lambda: load_images(path), errors), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), f"loading {path} blocked"
    assert len(errors) == 1 and isinstance(errors[0], DataError) and str(errors[0]) == expected
    line = _one_line_error(main(_scan_cli(tiny_model, path, tmp_path / "out")), capsys.readouterr().err)
    assert line == f"error: {expected}" and not (tmp_path / "out").exists()
    if kind == "socket":
        server.close()


def _catch(call: Callable[[], object], errors: list[BaseException]) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 (the test looks at it)
        errors.append(exc)


def test_resizing_is_a_warning_and_hopeless_sizes_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Problem 5: a resize is a WARNING giving both sizes; sides under 4 pixels and enlargements of more
    than 8x are refused in one line naming the file; shrinking stays allowed."""
    labels = np.array([0, 1, 0, 1])
    for side, model, ok in [(56, 28, True), (14, 28, True), (4, 28, True), (5, 40, True), (4, 40, False)]:
        np.savez(tmp_path / f"{side}.npz", x=_grey_stack(4, side), y=labels)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            if ok:
                data = load_images(tmp_path / f"{side}.npz", input_shape=(1, model, model))
                assert data.input_shape == (1, model, model) and data.converted_from == (1, side, side)
            else:
                with pytest.raises(DataError) as err:
                    load_images(tmp_path / f"{side}.npz", input_shape=(1, model, model))
                assert str(err.value) == (
                    f"{tmp_path / f'{side}.npz'}: images of 4x4 pixels would be enlarged 10x to the model's "
                    "40x40 input (at most 8x): images of another task?"
                )
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == int(ok)
        if ok:
            assert (
                warned[0]
                .getMessage()
                .startswith(
                    f"{tmp_path / f'{side}.npz'}: images resized from {side}x{side} to the model's {model}x{model}"
                )
            )
    np.savez(tmp_path / "thin.npz", x=RNG.integers(0, 256, (4, 3, 28), dtype=np.uint8), y=labels)
    with pytest.raises(
        DataError, match=r"thin.npz: images of 3x28 pixels cannot be resized .* under 4 pixels"
    ):
        load_images(tmp_path / "thin.npz", input_shape=(1, 28, 28))
    # a folder names the one image that cannot be used; the others' resize is one warning for the folder
    _write_folder(tmp_path / "f", ["a", "b"], 2, size=20)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(load_images(tmp_path / "f", input_shape=(1, 28, 28))) == 4
    warned = _warnings(caplog)
    assert len(warned) == 1 and warned[0].startswith(
        f"{tmp_path / 'f'}: images resized from 20x20 to the model's 28x28"
    )
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "f" / "b" / "tiny.png")
    with pytest.raises(DataError) as err:
        load_images(tmp_path / "f", input_shape=(1, 28, 28))
    assert str(err.value).startswith(f"{tmp_path / 'f' / 'b' / 'tiny.png'}: images of 2x2 pixels cannot be")
    # images of the model's own size are never refused, however small
    np.savez(tmp_path / "2.npz", x=_grey_stack(4, 2), y=labels)
    assert load_images(tmp_path / "2.npz", input_shape=(1, 2, 2)).converted_from is None


def test_a_1x1_npz_is_refused_by_the_cli_in_one_line(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "dots.npz", images=_grey_stack(20, 1), labels=np.arange(20) % 10)
    line = _one_line_error(
        main(_scan_cli(tiny_model, tmp_path / "dots.npz", tmp_path / "out")), capsys.readouterr().err
    )
    assert line == (
        f"error: {tmp_path / 'dots.npz'}: images of 1x1 pixels cannot be resized to the model's 28x28 input "
        "(a side under 4 pixels carries no image)"
    )
    assert not (tmp_path / "out").exists()


def _grey_stack(n: int, side: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, side, side), dtype=np.uint8)

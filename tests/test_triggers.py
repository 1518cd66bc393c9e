from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralcleanse import Trigger, TriggerError


def test_bottom_right_square_pixels() -> None:
    t = Trigger.square((1, 28, 28), size=4, at="bottom-right", margin=1)
    rows, cols = torch.nonzero(t.mask, as_tuple=True)
    assert rows.min() == 23 and rows.max() == 26 and cols.min() == 23 and cols.max() == 26
    assert t.l1_norm == 16.0 and t.to_dict()["bbox"] == [23, 23, 27, 27]


@pytest.mark.parametrize(
    ("at", "top_left"),
    [("top-left", (1, 1)), ("top-right", (1, 29)), ("bottom-left", (29, 1)), ((5, 7), (5, 7))],
)
def test_square_positions(at: str | tuple[int, int], top_left: tuple[int, int]) -> None:
    t = Trigger.square((3, 32, 32), size=(2, 2), at=at, margin=1)
    assert tuple(torch.nonzero(t.mask)[0].tolist()) == top_left


def test_apply_is_the_paper_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=gen)
    t = Trigger.square((3, 8, 8), size=3, at="top-left", margin=0, pattern="random", alpha=0.5, seed=4)
    out = t.apply(x)
    expected = (1 - t.mask) * x + t.mask * t.pattern
    assert torch.allclose(out, expected)
    # outside the patch nothing changes; inside it is the 50/50 mix
    assert torch.equal(out[..., 4:, 4:], x[..., 4:, 4:])
    assert torch.allclose(out[:, :, 0, 0], 0.5 * x[:, :, 0, 0] + 0.5 * t.pattern[:, 0, 0])
    assert not torch.equal(x, out)  # input untouched, output new


def test_patterns() -> None:
    cb = Trigger.square((1, 10, 10), size=4, at="top-left", margin=0, pattern="checkerboard")
    assert cb.pattern[0, :2, :2].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    r1 = Trigger.square((3, 10, 10), size=4, pattern="random", seed=7)
    r2 = Trigger.square((3, 10, 10), size=4, pattern="random", seed=7)
    r3 = Trigger.square((3, 10, 10), size=4, pattern="random", seed=8)
    assert torch.equal(r1.pattern, r2.pattern) and not torch.equal(r1.pattern, r3.pattern)
    assert len(torch.unique(r1.pattern[:, 5:9, 5:9])) > 10  # colour noise, not a constant


def test_image_file_pattern(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, :, 0] = 255  # pure red
    Image.fromarray(img).save(tmp_path / "red.png")
    t = Trigger.from_spec(f"square:size=4,pattern=file:{tmp_path / 'red.png'}", (3, 16, 16))
    patch = t.pattern[:, 11:15, 11:15]
    assert torch.allclose(patch[0], torch.ones(4, 4)) and float(patch[1:].abs().max()) == 0.0
    with pytest.raises(TriggerError, match="not found"):
        Trigger.from_spec(f"square:size=4,pattern=file:{tmp_path / 'none.png'}", (3, 16, 16))


def test_a_trigger_drawn_as_two_images(tmp_path: Path) -> None:
    from bad_input_files import png_declaring

    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[2:5, 3:9] = 255  # an L-shaped trigger, half-transparent in one row
    mask[5, 3] = 128
    pattern = np.zeros((16, 16, 3), dtype=np.uint8)
    pattern[..., 2] = 255  # blue
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(pattern).save(tmp_path / "pattern.png")
    spec = f"image:mask={tmp_path / 'mask.png'},pattern={tmp_path / 'pattern.png'}"
    t = Trigger.from_spec(spec, (3, 16, 16))
    assert t.l1_norm == pytest.approx(18 + 128 / 255) and t.mask[5, 3] == pytest.approx(128 / 255)
    stamped = t.apply(torch.zeros(1, 3, 16, 16))[0]
    assert float(stamped[2, 2:5, 3:9].min()) == 1.0 and float(stamped[:2].abs().max()) == 0.0
    assert t.spec == spec
    commas = tmp_path / "a,b"  # a path with commas in a spec that splits on commas
    commas.mkdir()
    (commas / "m,1.png").write_bytes((tmp_path / "mask.png").read_bytes())
    (commas / "p.png").write_bytes((tmp_path / "pattern.png").read_bytes())
    same = Trigger.from_spec(f"image:mask={commas / 'm,1.png'},pattern={commas / 'p.png'}", (3, 16, 16))
    assert torch.equal(same.mask, t.mask) and torch.equal(same.pattern, t.pattern)
    with pytest.raises(TriggerError, match="the trigger image is 16x16, the images are 28x28"):
        Trigger.from_spec(spec, (3, 28, 28))
    with pytest.raises(TriggerError, match="give pattern=PATH"):
        Trigger.from_spec(f"image:mask={tmp_path / 'mask.png'}", (3, 16, 16))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(TriggerError, match="junk.png: cannot read trigger image"):
        Trigger.from_spec(
            f"image:mask={tmp_path / 'junk.png'},pattern={tmp_path / 'pattern.png'}", (3, 16, 16)
        )
    big = png_declaring(tmp_path / "big.png", 9500, 9500)  # under PIL's own error, over its warning
    with pytest.raises(TriggerError, match="big.png: refused: the image declares 9500x9500 pixels"):
        Trigger.from_spec(f"square:size=4,pattern=file:{big}", (3, 16, 16))
    bomb = png_declaring(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(TriggerError, match="bomb.png: refused: a decompression bomb"):
        Trigger.from_spec(f"image:mask={bomb},pattern={tmp_path / 'pattern.png'}", (3, 16, 16))


def test_trigger_images_keep_their_meaning(tmp_path: Path) -> None:
    """16-bit grey keeps its depth; a mask in colour or with transparency is refused, never guessed."""
    from neuralcleanse.errors import DataError

    grey16 = np.full((16, 16), 1000, dtype=np.uint16)  # 1.5% grey, not white
    Image.fromarray(grey16).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I;16")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:8, 4:8] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    t = Trigger.from_spec(
        f"image:mask={tmp_path / 'mask.png'},pattern={tmp_path / 'dark16.png'}", (3, 16, 16)
    )
    assert float(t.pattern.max()) == pytest.approx(1000 / 65535)
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[4:8, 4:8, 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    clear = np.full((16, 16, 4), 255, dtype=np.uint8)
    clear[..., 3] = 0
    clear[4:8, 4:8, 3] = 255
    Image.fromarray(clear).save(tmp_path / "alpha.png")
    for name, message in [("red.png", "the mask is in colour"), ("alpha.png", "the mask has transparency")]:
        with pytest.raises(TriggerError, match=message) as info:
            Trigger.from_spec(f"image:mask={tmp_path / name},pattern={tmp_path / 'dark16.png'}", (3, 16, 16))
        assert isinstance(info.value, DataError)  # bad input data: exit code 1 on the command line


def test_blended_trigger_covers_the_image() -> None:
    t = Trigger.from_spec("blend:pattern=random,alpha=0.2,seed=1", (1, 8, 8))
    assert torch.allclose(t.mask, torch.full((8, 8), 0.2)) and abs(t.l1_norm - 12.8) < 1e-5


def test_spec_round_trips_through_the_card_string() -> None:
    t = Trigger.from_spec("square:size=3x5,row=2,col=4,pattern=checkerboard", (1, 28, 28))
    again = Trigger.from_spec(t.spec, (1, 28, 28))
    assert torch.equal(t.mask, again.mask) and torch.equal(t.pattern, again.pattern)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("square:size=40", "larger than"),
        ("square:size=4,row=26,col=0", "outside"),
        ("square:size=4,row=3", "both row and col"),
        ("square:size=4,shape=round", "unknown option 'shape'"),
        ("square:size=4,pattern=plaid", "unknown trigger pattern"),
        ("square:size=4,alpha=0", "alpha"),
        ("square:size=four", "trigger spec"),
        ("square:size", "key=value"),
        ("hexagon:size=3", "unknown kind"),
        ("square:size=0", "at least 1"),
        ("square:at=middle", "unknown trigger position"),
        ("square:size=27,margin=2", "does not fit"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(TriggerError, match=message) as info:
        Trigger.from_spec(spec, (1, 28, 28))
    assert "\n" not in str(info.value)


def test_save_load_round_trip(tmp_path: Path) -> None:
    t = Trigger.square((3, 12, 12), size=3, pattern="random", seed=3)
    t.save(tmp_path / "t.safetensors")
    back = Trigger.load(tmp_path / "t.safetensors")
    assert torch.equal(back.mask, t.mask) and torch.equal(back.pattern, t.pattern) and back.spec == t.spec
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(TriggerError, match="not a valid trigger file"):
        Trigger.load(tmp_path / "bad.safetensors")


def test_apply_rejects_wrong_image_shape() -> None:
    t = Trigger.square((1, 28, 28), size=4)
    with pytest.raises(TriggerError, match="images"):
        t.apply(torch.zeros(2, 3, 28, 28))


def test_a_weights_file_given_as_a_trigger_is_named_briefly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({f"layer{i}.weight": torch.zeros(2) for i in range(30)}, tmp_path / "w.safetensors")
    with pytest.raises(TriggerError) as err:
        Trigger.load(tmp_path / "w.safetensors")
    message = str(err.value)
    assert "found 30 tensors (model weights?): layer0.weight, layer1.weight, layer10.weight" in message
    assert message.endswith("and 26 more") and len(message) < 250

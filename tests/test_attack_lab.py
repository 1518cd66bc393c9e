"""The attack lab: which samples each attack changes, to which label, which pixels; one tiny end-to-end run
per attack family; the generated sign set in GTSRB format; zoo specs and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.cli import main
from neuralcleanse.data.gtsrb import load_gtsrb, write_gtsrb
from neuralcleanse.data.signs import SIGN_CLASSES, generate_signs
from neuralcleanse.lab.attacks import BadNets, MultiBackdoor, Trojan, build_attack, watermark_mask
from neuralcleanse.lab.attacks.base import PoisonSpec, poison_many
from neuralcleanse.lab.zoo import ZooSpec, parse_spec, read_manifest_digests, write_manifest


def _tiny(n: int = 200, classes: int = 4) -> nc.ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 12, 12, generator=gen) * 0.5
    labels = torch.arange(n) % classes
    return nc.ImageDataset(images, labels, classes, tuple("abcd"[:classes]), "tiny")


# ---- poisoning: which samples, which label, which pixels ----------------------------------------------------
def test_several_backdoors_poison_disjoint_images_each_to_its_target() -> None:
    data = _tiny()
    a = nc.Trigger.square((1, 12, 12), size=2, at="top-left")
    b = nc.Trigger.square((1, 12, 12), size=2, at="bottom-right", pattern="checkerboard")
    out, poisoned, covered = poison_many(data, [PoisonSpec(1, a, 0.1), PoisonSpec(3, b, 0.1)], seed=0)
    assert poisoned == 40 and covered == 0
    changed = torch.nonzero((out.images != data.images).flatten(1).any(1)).flatten()
    relabelled = torch.nonzero(out.labels != data.labels).flatten()
    assert torch.equal(changed, relabelled) and len(changed) == 40
    top_left = out.images[changed][:, 0, 1:3, 1:3].flatten(1).eq(1).all(1)
    # images with the top-left square went to 1, the others (checkerboard bottom-right) to 3
    assert (out.labels[changed][top_left] == 1).all() and (out.labels[changed][~top_left] == 3).all()
    assert int(top_left.sum()) == 20
    assert (data.labels[changed][top_left] != 1).all() and (data.labels[changed][~top_left] != 3).all()


def test_source_specific_poison_takes_only_source_images_and_covers_the_rest() -> None:
    data = _tiny()
    trig = nc.Trigger.square((1, 12, 12), size=3)
    spec = PoisonSpec(0, trig, 0.1, source_labels=(2,), cover_rate=0.1)
    out, poisoned, covered = poison_many(data, [spec], seed=1)
    assert poisoned == 20 and covered == 20
    relabelled = torch.nonzero(out.labels != data.labels).flatten()
    assert (data.labels[relabelled] == 2).all() and (out.labels[relabelled] == 0).all()
    stamped = torch.nonzero((out.images != data.images).flatten(1).any(1)).flatten()
    cover = stamped[~torch.isin(stamped, relabelled)]
    assert len(cover) == 20
    # cover images are of other labels (not source, not target) and keep their label
    assert torch.isin(data.labels[cover], torch.tensor([1, 3])).all()
    assert torch.equal(out.labels[cover], data.labels[cover])
    assert torch.equal(out.images[cover], trig.apply(data.images[cover]))


def test_blended_trigger_changes_every_pixel_by_alpha() -> None:
    data = _tiny()
    trig = nc.Trigger.from_spec("blend:pattern=random,alpha=0.2,seed=1", (1, 12, 12))
    out, _, _ = poison_many(data, [PoisonSpec(2, trig, 0.05)], seed=0)
    idx = torch.nonzero(out.labels != data.labels).flatten()
    expected = 0.8 * data.images[idx] + 0.2 * trig.pattern
    assert torch.allclose(out.images[idx], expected, atol=1e-6)


def test_trojan_masks_cover_the_asked_area() -> None:
    wm = watermark_mask(32, 32, area=0.07)
    assert 0.06 <= float(wm.mean()) <= 0.12
    rows, cols = torch.nonzero(wm, as_tuple=True)
    assert int(rows.max() - rows.min()) > 8 and int(cols.max() - cols.min()) > 8  # strokes, not a blob
    sq = Trojan(target=0, mask="square", area=0.07).build_mask((3, 32, 32))
    assert abs(float(sq.mean()) - 0.07) < 0.02 and sq[-2, -2] == 1 and sq[0, 0] == 0


def test_trojan_trigger_excites_the_chosen_neurons(
    clean_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> None:
    attack = Trojan(target=0, mask="watermark", steps=60)
    x = mnist_sample.train.images[:64]
    trig, details = attack.generate_trigger(clean_model.model, x, seed=0, device=torch.device("cpu"))
    assert details["layer"] == "fc" and len(details["neurons"]) == 2  # type: ignore[arg-type]
    assert details["trigger_activation"] > 1.5 * details["clean_activation"], details  # type: ignore[operator]
    assert torch.equal(trig.region, attack.build_mask((1, 28, 28)) > 0)  # pattern only inside the mask
    assert not clean_model.model.fc[1].weight.requires_grad and not clean_model.model.training
    assert not clean_model.model.fc._forward_hooks  # no hook left behind


# ---- tiny end-to-end runs, one per attack family -------------------------------------------------------------
@pytest.fixture(scope="module")
def small(mnist_sample: nc.DatasetSplits) -> nc.DatasetSplits:
    return nc.DatasetSplits("mnist-sample", mnist_sample.train.sample(2000, seed=0), mnist_sample.test)


def _train(small: nc.DatasetSplits, attack: object, epochs: int = 4) -> nc.ModelBundle:
    return nc.train_recipe(
        nc.Recipe(training=nc.TrainSettings(epochs=epochs, seed=0), attack=attack), data=small, device="cpu"
    )  # type: ignore[arg-type]


def test_multi_target_backdoor_end_to_end(small: nc.DatasetSplits) -> None:
    attack = build_attack(
        "multi",
        {
            "backdoors": [
                {"target": 1, "trigger": "square:size=4,at=top-left"},
                {"target": 7, "trigger": "square:size=4,pattern=checkerboard"},
            ]
        },
    )
    bundle = _train(small, attack)
    card = bundle.card
    assert card.attack == "multi" and card.targets == [1, 7] and len(bundle.triggers) == 2
    assert all(b.attack_success is not None and b.attack_success > 0.8 for b in card.backdoors)
    assert card.clean_accuracy is not None and card.clean_accuracy > 0.9
    assert card.training["poisoned_images"] == 400


def test_source_specific_backdoor_end_to_end(small: nc.DatasetSplits) -> None:
    attack = BadNets(
        target=0, source_labels=(7,), poison_rate=0.05, cover_rate=0.1, trigger="square:size=4,at=top-right"
    )
    bundle = _train(small, attack, epochs=5)
    b = bundle.card.backdoors[0]
    assert b.source_labels == [7] and b.attack_success is not None and b.off_source_success is not None
    assert b.attack_success > 0.8 and b.off_source_success < 0.3  # fires on sevens, mostly not on others


def test_trojan_end_to_end(small: nc.DatasetSplits, tmp_path: Path) -> None:
    bundle = _train(small, Trojan(target=2, mask="square", steps=60, retrain_epochs=1), epochs=3)
    card = bundle.card
    assert card.attack == "trojan" and card.targets == [2]
    assert card.attack_success is not None and card.attack_success > 0.8
    assert card.attack_details["neurons"] and card.backdoors[0].spec.startswith("trojan:mask=square")
    # the optimised trigger round-trips through the model directory
    bundle.save(tmp_path / "trojan")
    back = nc.load_model_dir(tmp_path / "trojan")
    assert torch.equal(back.triggers[0].pattern, bundle.triggers[0].pattern)
    assert back.card.attack_details["neurons"] == card.attack_details["neurons"]


# ---- the generated colour task ----------------------------------------------------------------------------
def test_sign_set_is_seeded_and_reads_back_through_the_gtsrb_loader(tmp_path: Path) -> None:
    (x, y), (xt, yt) = generate_signs(train_per_class=2, test_per_class=1, seed=4)
    assert x.shape == (86, 32, 32, 3) and x.dtype == np.uint8 and sorted(set(y.tolist())) == list(range(43))
    (x2, _), _ = generate_signs(train_per_class=2, test_per_class=1, seed=4)
    assert np.array_equal(x, x2)
    (x3, _), _ = generate_signs(train_per_class=2, test_per_class=1, seed=5)
    assert not np.array_equal(x, x3)
    write_gtsrb(tmp_path / "g", (x, y), (xt, yt))
    assert (tmp_path / "g" / "Final_Training" / "Images" / "00042" / "GT-00042.csv").is_file()
    train = load_gtsrb(tmp_path / "g", split="train", class_names=[c[0] for c in SIGN_CLASSES])
    assert len(train) == 86 and train.num_classes == 43 and train.input_shape == (3, 32, 32)
    order = np.argsort(y, kind="stable")  # the loader walks class folders in order
    assert np.allclose(train.images.numpy(), x[order].transpose(0, 3, 1, 2) / 255.0, atol=1 / 255)


# ---- zoo specs -------------------------------------------------------------------------------------------
def _spec(models: list[dict[str, object]]) -> dict[str, object]:
    return {"defaults": {"epochs": 1}, "model": models}


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [{"name": "a", "attack": "badnets", "target": 0, "colour": "red"}],
            "model 'a': unknown key 'colour'",
        ),
        ([{"name": "a"}, {"name": "a"}], "model 'a': duplicate model name"),
        ([{"name": "a", "attack": "sneaky"}], "model 'a': unknown attack 'sneaky'"),
        ([{"name": "a", "attack": "badnets"}], "model 'a': badnets needs a target"),
        ([{"name": "a", "attack": "badnets", "target": 0, "poison_rate": 1.5}], "model 'a': poison rate"),
        ([{"name": "a", "arch": "vgg16"}], "model 'a': unknown architecture"),
        ([{"attack": "badnets"}], "model entry 0: needs a name"),
        (
            [{"name": "a", "attack": "badnets", "target": 0, "control": "nobody"}],
            "model 'a': control 'nobody': no clean entry",
        ),
        ([{"name": "c"}, {"name": "d", "control": "c"}], "model 'd': control 'c': only an infected"),
    ],
)
def test_bad_spec_entries_name_the_entry(models: list[dict[str, object]], message: str) -> None:
    with pytest.raises(nc.SettingsError, match=message.replace("(", r"\(")):
        parse_spec(_spec(models), source="s.toml")


def test_named_control_is_compared_and_does_not_force_a_rebuild() -> None:
    from neuralcleanse.lab.zoo import ZooRow, attach_controls

    models: list[dict[str, object]] = [
        {"name": "c", "epochs": 3},
        {"name": "t", "attack": "badnets", "target": 0, "epochs": 2, "control": "c"},
        {"name": "u", "attack": "badnets", "target": 0, "epochs": 2},
    ]
    spec = parse_spec(_spec(models))
    rows = [
        ZooRow(name=n, dataset="d", arch="mnist", attack=a, targets=[], trigger="-", trigger_area=None, clean_accuracy=acc,
               attack_success=None, built="kept")
        for n, a, acc in (("c", "none", 0.9), ("t", "badnets", 0.88), ("u", "badnets", 0.8))
    ]  # fmt: skip
    attach_controls(rows, spec)
    assert rows[1].control == "c" and rows[1].accuracy_drop == pytest.approx(0.02)
    assert rows[2].control is None  # different training, no control named
    plain = parse_spec(_spec([models[0], {k: v for k, v in models[1].items() if k != "control"}]))
    assert plain.entries[1].digest == spec.entries[1].digest


def test_shipped_spec_parses_and_covers_every_attack() -> None:
    from neuralcleanse.lab.zoo import default_spec_path, load_spec

    spec = load_spec(default_spec_path())
    kinds = {e.attack_name for e in spec.entries}
    assert {"none", "badnets", "multi", "trojan"} <= kinds
    assert any(isinstance(e.recipe.attack, MultiBackdoor) for e in spec.entries)
    datasets = {e.recipe.dataset for e in spec.entries}
    assert {"mnist-sample", "fashion-mnist"} <= datasets
    signs = load_spec(default_spec_path("signs"))
    assert {e.recipe.dataset for e in signs.entries} == {"traffic-signs"}
    assert {e.attack_name for e in signs.entries} == {"none", "badnets", "trojan"}


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"name": "off", "attack": "badnets", "target": 0, "trigger": "square:size=4,row=26,col=0"},
            "model 'off'.*outside the 28x28",
        ),
        ({"name": "big", "attack": "badnets", "target": 10}, "model 'big'.*target label 10"),
        (
            {
                "name": "clash",
                "attack": "multi",
                "backdoors": [
                    {"target": 1, "trigger": "square:size=4"},
                    {"target": 2, "trigger": "square:size=6"},
                ],
            },
            "model 'clash'.*overlapping triggers",
        ),
    ],
)
def test_zoo_cli_refuses_impossible_entries_and_builds_nothing(
    tmp_path: Path, model: dict[str, object], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec([{"name": "fine"}, model])))
    code = main(["zoo", "--spec", str(spec), "--out", str(tmp_path / "zoo")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and "\n" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "zoo" / "fine").exists()


def test_zoo_builds_skips_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[defaults]\nepochs = 1\n[[model]]\nname = "c"\n[[model]]\nname = "b"\nattack = "badnets"\ntarget = 0\n'
    )
    out = tmp_path / "zoo"
    assert main(["zoo", "--spec", str(spec), "--out", str(out), "--markdown", str(tmp_path / "t.md")]) == 0
    manifest = json.loads((out / "zoo.json").read_text())
    rows = {m["name"]: m for m in manifest["models"]}
    assert rows["b"]["targets"] == [0] and rows["b"]["control"] == "c" and rows["b"]["built"] == "built"
    assert nc.ModelCard.load(out / "b" / "card.json").backdoors[0].attack_success is not None
    assert "| b | mnist-sample | badnets |" in (tmp_path / "t.md").read_text()
    before = (out / "b" / "model.safetensors").stat().st_mtime_ns
    assert main(["zoo", "--spec", str(spec), "--out", str(out)]) == 0
    assert (out / "b" / "model.safetensors").stat().st_mtime_ns == before
    assert {m["name"]: m["built"] for m in json.loads((out / "zoo.json").read_text())["models"]}[
        "b"
    ] == "kept"
    # building one model again keeps the others in the manifest
    assert main(["zoo", "--spec", str(spec), "--out", str(out), "--only", "c"]) == 0
    assert {m["name"] for m in json.loads((out / "zoo.json").read_text())["models"]} == {"b", "c"}
    # a changed entry is not silently reused
    spec.write_text(spec.read_text().replace("target = 0", "target = 1"))
    assert main(["zoo", "--spec", str(spec), "--out", str(out)]) != 0
    assert "different spec entry 'b'" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["[]", '{"models": 5}', "{", ""])
def test_an_unreadable_zoo_manifest_is_rebuilt_not_a_crash(tmp_path: Path, text: str) -> None:
    # a zoo.json that is JSON but not the manifest's shape (a list, models not a list) once crashed
    (tmp_path / "zoo.json").write_text(text)
    assert read_manifest_digests(tmp_path) == {}
    write_manifest(tmp_path, ZooSpec([], "spec.toml"), [])
    assert json.loads((tmp_path / "zoo.json").read_text())["models"] == []


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"name": "r", "attack": "badnets", "target": 0, "reference": True}], "model 'r': only a clean"),
        ([{"name": "r", "reference": "yes"}], "model 'r': reference must be true or false"),
    ],
)
def test_bad_reference_entries_name_the_entry(models: list[dict[str, object]], message: str) -> None:
    with pytest.raises(nc.SettingsError, match=message):
        parse_spec(_spec(models), source="s.toml")


def test_references_are_per_dataset_and_never_the_model_itself() -> None:
    spec = parse_spec(
        _spec([
            {"name": "c"},
            {"name": "r1", "seed": 1, "reference": True},
            {"name": "r2", "seed": 2, "reference": True},
            {"name": "f", "dataset": "fashion-mnist", "reference": True},
        ])
    )  # fmt: skip
    by = {e.name: e for e in spec.entries}
    assert spec.references_for(by["c"]) == ["r1", "r2"]
    assert spec.references_for(by["r1"]) == ["r2"]  # a reference is tested against the others
    assert spec.references_for(by["f"]) == []
    # marking a model as reference does not rebuild it
    assert by["r1"].digest == parse_spec(_spec([{"name": "r1", "seed": 1}])).entries[0].digest


def test_zoo_scan_reuses_reports_and_tests_against_references(
    tmp_path: Path,
    badnets_report: nc.DetectionReport,
    clean_report: nc.DetectionReport,
    clean_report_full: nc.DetectionReport,
) -> None:
    """The scan summary of a zoo: the paper's test, the log test and the relative test against the
    zoo's reference models. The scans are the session's (of models of the same recipe), filed under the
    zoo models' weights so that the zoo keeps them instead of optimising again."""
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[defaults]\nepochs = 1\n[[model]]\nname = "c"\n'
        '[[model]]\nname = "b"\nattack = "badnets"\ntarget = 0\n'
        '[[model]]\nname = "r"\nseed = 1\nreference = true\n'
    )
    out = tmp_path / "zoo"
    assert main(["zoo", "--spec", str(spec), "--out", str(out)]) == 0
    # the session's scans ran with seed 0; a reference model is scanned without screening
    for name, report in (("c", clean_report), ("b", badnets_report), ("r", clean_report_full)):
        copy = nc.DetectionReport.load(report.save(tmp_path / "tmp" / name))
        copy.model["weights_sha256"] = nc.ModelCard.load(out / name / "card.json").weights_sha256
        copy.save(out / "scans" / name)
    md = tmp_path / "t.md"
    scan = ["zoo", "--spec", str(spec), "--out", str(out), "--scan", "--scan-seed", "0"]
    assert main([*scan, "--markdown", str(md)]) == 0
    rows = {m["name"]: m for m in json.loads((out / "zoo.json").read_text())["models"]}
    b, c, r = rows["b"]["scan"], rows["c"]["scan"], rows["r"]["scan"]
    assert b["flagged"] == badnets_report.flagged and b["target_index"] == pytest.approx(
        [badnets_report.label(0).anomaly_index], abs=1e-5
    )
    assert b["references"] == ["r"] and b["relative_flagged"] == [0] and b["relative_outcome"] == "detected"
    assert b["relative_target_index"][0] > 2
    ratio = badnets_report.label(0).l1_norm / clean_report_full.label(0).l1_norm
    assert b["relative_ratio"]["0"] == pytest.approx(ratio, rel=1e-3) and ratio < 0.5
    assert (
        c["references"] == ["r"]
        and c["relative_flagged"] == []
        and c["relative_outcome"] == "correct (clean)"
    )
    assert "references" not in r and rows["r"]["reference"] is True  # no other reference to compare with
    table = md.read_text()
    assert "vs references: flagged" in table
    b_line = table.split("| b |")[1].split("\n")[0]
    assert "| 0 | " in b_line and f"| 0 (×{b['relative_ratio']['0']:.2f}) |" in b_line
    # a reference scan made for other weights (the reference was rebuilt) is not compared with
    stale = nc.DetectionReport.load(out / "scans" / "r")
    stale.model["weights_sha256"] = "0" * 64
    stale.save(out / "scans" / "r", force=True)
    assert main([*scan, "--only", "b"]) == 0
    b = {m["name"]: m for m in json.loads((out / "zoo.json").read_text())["models"]}["b"]["scan"]
    assert b["flagged"] == badnets_report.flagged and "references" not in b

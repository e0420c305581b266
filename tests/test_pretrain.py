"""Synthetic pretraining (`fedmammo pretrain`): its weights, its card, the card check on load, and the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import AppConfig
from common.errors import ConfigError, ModelError
from common.models import build_model, card_path
from simulations.hydra_config import compose_simulation
from simulations.pretrain import PretrainResult, pretrain, pretrain_seed

SITES, IMAGES, SCALE, SIZE = 2, 16, 0.25, 32
OVERRIDES = [f"data.image_size={SIZE}", "data.val_fraction=0.3", "training.batch_size=16"]


def _config(*extra: str) -> AppConfig:
    config, _ = compose_simulation([*OVERRIDES, *extra])
    return config


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pretraining folder for the module: phantoms and their decode cache are made once and reused."""
    return tmp_path_factory.mktemp("pretrain") / "phantoms"


@pytest.fixture(scope="module")
def pretrained(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PretrainResult:
    out = tmp_path_factory.mktemp("weights") / "small.pth"
    return pretrain(
        _config(), out, epochs=2, num_sites=SITES, images_per_site=IMAGES, data_dir=phantom_dir, matrix_scale=SCALE
    )


@pytest.fixture
def weights_copy(pretrained: PretrainResult, tmp_path: Path) -> Path:
    """The pretrained weights and card copied, so a test may tamper with them."""
    target = tmp_path / "copy.pth"
    shutil.copy(pretrained.weights_path, target)
    shutil.copy(pretrained.card_path, card_path(target))
    return target


@pytest.fixture
def model_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="common.models"):
        yield caplog


def _edit_card(weights: Path, section: str, key: str, value: object) -> None:
    path = card_path(weights)
    card = json.loads(path.read_text(encoding="utf-8"))
    card[section][key] = value
    path.write_text(json.dumps(card), encoding="utf-8")


def test_pretrain_writes_weights_and_a_card_with_what_made_them(pretrained: PretrainResult) -> None:
    from common.data import PREPROCESS_VERSION
    from simulations.phantoms import GENERATOR_VERSION

    config = _config()
    card = json.loads(pretrained.card_path.read_text(encoding="utf-8"))

    assert pretrained.card_path == pretrained.weights_path.with_name("small.pth.json")
    assert card["format"] == "fedmammo-weights-card" and card["format_version"] == 1
    assert card["kind"] == "fedmammo synthetic pretraining"
    assert card["weights"]["sha256"] == hashlib.sha256(pretrained.weights_path.read_bytes()).hexdigest()
    assert card["weights"]["bytes"] == pretrained.weights_path.stat().st_size
    assert card["model"] == {
        "name": "small_cnn",
        "norm": "groupnorm",
        "num_classes": 2,
        "class_names": ["benign/normal", "malignant"],
        "in_channels": 1,
        "initial_weights": None,
    }
    assert card["data"]["image_size"] == SIZE and card["data"]["preprocess_version"] == PREPROCESS_VERSION
    phantoms = card["phantoms"]
    assert phantoms["generator_version"] == GENERATOR_VERSION
    assert phantoms["seed"] == pretrain_seed(config.seed) != config.seed
    assert phantoms["run_seed"] == config.seed and phantoms["seed"] - phantoms["seed_offset"] == config.seed
    assert (phantoms["sites"], phantoms["images_per_site"], phantoms["matrix_scale"]) == (SITES, IMAGES, SCALE)
    assert phantoms["lesion_contrast"] == config.federation.lesion_contrast
    assert len(set(phantoms["scanners"])) == SITES  # one scanner per hospital
    assert phantoms["labels"] == "malignant-vs-rest" and phantoms["train_images"] > 0
    training = card["training"]
    assert training["epochs"] == 2 and len(training["val_auc"]) == len(training["val_loss"]) == 2
    assert training["chosen_epoch"] == pretrained.best_epoch in (1, 2)
    assert training["privacy"] == "none"
    assert (training["learning_rate"], training["batch_size"]) == (config.training.learning_rate, 16)
    assert card["versions"]["torch"] == torch.__version__ and card["versions"]["fedmammo"]
    assert card["seconds"] > 0
    state = torch.load(pretrained.weights_path, weights_only=True)
    assert set(state) == set(build_model("small_cnn").state_dict())  # plain keys, no Opacus prefix


def test_pretraining_phantoms_share_no_image_exam_or_sop_with_the_demo_phantoms_of_the_same_seed(
    pretrained: PretrainResult, phantom_dir: Path, tmp_path: Path
) -> None:
    import pydicom

    from simulations.phantoms import generate_federation

    config = _config()
    demo = tmp_path / "demo"
    generate_federation(  # what generate_configured_federation makes for this config, at the tests' scale
        demo,
        num_sites=SITES,
        images_per_site=IMAGES,
        seed=config.seed,
        lesion_contrast=config.federation.lesion_contrast,
        matrix_scale=SCALE,
    )

    def identities(root: Path) -> tuple[set[str], set[str], set[str]]:
        sops, studies, pixels = set(), set(), set()
        for file in sorted(root.glob("site_*/images/*.dcm")):
            dataset = pydicom.dcmread(file)
            sops.add(str(dataset.SOPInstanceUID))
            studies.add(str(dataset.StudyInstanceUID))
            pixels.add(hashlib.sha256(dataset.PixelData).hexdigest())
        return sops, studies, pixels

    ours, theirs = identities(phantom_dir), identities(demo)
    assert all(len(found) > 0 for found in (*ours, *theirs))
    for pretraining_ids, demo_ids in zip(ours, theirs, strict=True):
        assert not pretraining_ids & demo_ids
    stamps = [json.loads(p.read_text()) for p in sorted(phantom_dir.glob("site_*/phantom.json"))]
    assert [s["seed"] for s in stamps] == [pretrain_seed(config.seed)] * SITES
    assert [s["site_index"] for s in stamps] == list(range(SITES))


def test_pretrained_weights_load_through_build_model_unchanged(pretrained: PretrainResult) -> None:
    saved = torch.load(pretrained.weights_path, weights_only=True)

    model = build_model("small_cnn", num_classes=2, weights_path=pretrained.weights_path, image_size=SIZE)

    loaded = model.state_dict()
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_binary_weights_load_into_a_three_class_model_with_a_fresh_head(pretrained: PretrainResult) -> None:
    saved = torch.load(pretrained.weights_path, weights_only=True)

    model = build_model("small_cnn", num_classes=3, weights_path=pretrained.weights_path)

    loaded = model.state_dict()
    assert loaded["fc.weight"].shape[0] == 3 and saved["fc.weight"].shape[0] == 2
    body = [key for key in saved if not key.startswith("fc.")]
    assert body and all(torch.equal(loaded[key], saved[key]) for key in body)


def test_a_card_whose_hash_does_not_match_the_weights_is_refused_naming_the_file(weights_copy: Path) -> None:
    _edit_card(weights_copy, "weights", "sha256", "0" * 64)

    with pytest.raises(ModelError, match="SHA-256") as raised:
        build_model("small_cnn", weights_path=weights_copy)
    assert str(weights_copy) in str(raised.value) and "0" * 64 in str(raised.value)


def test_weights_changed_after_pretraining_are_refused(weights_copy: Path) -> None:
    state = torch.load(weights_copy, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    torch.save(state, weights_copy)  # loads fine as a state dict: only the card can tell

    with pytest.raises(ModelError, match="does not match its card"):
        build_model("small_cnn", weights_path=weights_copy)


def test_weights_made_for_another_model_name_or_norm_are_refused_naming_both_values(weights_copy: Path) -> None:
    with pytest.raises(ModelError) as by_name:
        build_model("resnet18", weights_path=weights_copy)
    message = str(by_name.value)
    assert "model.weights_path" in message and str(weights_copy) in message
    assert "model.name=small_cnn" in message and "model.name=resnet18" in message

    _edit_card(weights_copy, "model", "norm", "frozen_bn")  # same bytes, so only the norm differs now
    with pytest.raises(ModelError, match=r"model\.norm=frozen_bn") as by_norm:
        build_model("small_cnn", norm="groupnorm", weights_path=weights_copy)
    assert "model.norm=groupnorm" in str(by_norm.value)


def test_another_image_size_or_preprocessing_version_loads_with_a_warning(
    weights_copy: Path, model_logs: pytest.LogCaptureFixture
) -> None:
    build_model("small_cnn", weights_path=weights_copy, image_size=SIZE)
    assert not [r for r in model_logs.records if r.levelno >= logging.WARNING]

    build_model("small_cnn", weights_path=weights_copy, image_size=128)
    assert any("data.image_size=32" in r.getMessage() and "128" in r.getMessage() for r in model_logs.records)

    model_logs.clear()
    _edit_card(weights_copy, "data", "preprocess_version", "preprocess-v0")
    build_model("small_cnn", weights_path=weights_copy)
    warnings = [r.getMessage() for r in model_logs.records if r.levelno == logging.WARNING]
    assert any("preprocess-v0" in message for message in warnings)


def test_weights_without_a_card_load_as_before(pretrained: PretrainResult, tmp_path: Path) -> None:
    plain = tmp_path / "torchvision_style.pth"
    shutil.copy(pretrained.weights_path, plain)
    (tmp_path / "other.json").write_text("{}")  # not its card

    model = build_model("small_cnn", weights_path=plain)

    assert torch.equal(model.state_dict()["fc.weight"], torch.load(plain, weights_only=True)["fc.weight"])
    with pytest.raises(ModelError, match="does not fit model 'resnet18'"):  # no card: load_weights decides
        build_model("resnet18", weights_path=plain)


def test_a_json_of_another_tool_beside_the_weights_is_ignored_but_a_damaged_card_is_refused(
    weights_copy: Path,
) -> None:
    card = card_path(weights_copy)
    card.write_text(json.dumps({"license": "BSD"}))
    build_model("small_cnn", weights_path=weights_copy)

    card.write_text("{not json")
    with pytest.raises(ModelError, match="could not be read"):
        build_model("small_cnn", weights_path=weights_copy)


def test_the_best_epoch_is_kept_not_the_last(
    phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simulations.pretrain as module

    aucs = iter([0.6, 0.9, 0.7])
    states: list[dict[str, torch.Tensor]] = []
    real_train = module.train_local

    def recording_train(*args: object, **kwargs: object) -> object:
        result = real_train(*args, **kwargs)
        states.append({k: v.clone() for k, v in result.state_dict.items()})
        return result

    monkeypatch.setattr(module, "_val_auc", lambda *_: next(aucs))
    monkeypatch.setattr(module, "train_local", recording_train)
    printed: list[module.EpochResult] = []

    result = pretrain(
        _config(),
        tmp_path / "best.pth",
        epochs=3,
        num_sites=SITES,
        images_per_site=IMAGES,
        data_dir=phantom_dir,
        matrix_scale=SCALE,
        on_epoch=printed.append,
    )

    assert result.best_epoch == 2 and result.best_val_auc == 0.9
    assert [e.best for e in printed] == [True, True, False]
    assert result.card["training"]["chosen_epoch"] == 2 and result.card["training"]["selection"] == "val_auc"
    assert result.card["training"]["val_auc"] == [0.6, 0.9, 0.7]
    saved = torch.load(result.weights_path, weights_only=True)
    assert all(torch.equal(saved[k], states[1][k]) for k in saved)
    assert not all(torch.equal(saved[k], states[2][k]) for k in saved)


def test_epoch_choice_without_an_auc_falls_back_to_val_loss_then_the_last_epoch() -> None:
    from simulations.pretrain import _better

    nan = float("nan")
    assert _better(2, 0.7, 5.0, (1, nan, 0.1))  # an AUC beats none
    assert not _better(2, nan, 0.1, (1, 0.7, 5.0))
    assert not _better(2, 0.7, 0.1, (1, 0.7, 5.0))  # ties keep the earlier epoch
    assert _better(2, nan, 0.1, (1, nan, 0.2)) and not _better(2, nan, 0.3, (1, nan, 0.2))
    assert _better(2, nan, nan, (1, nan, nan))


def test_three_classes_are_pretrained_from_the_phantoms_findings(phantom_dir: Path, tmp_path: Path) -> None:
    from common.data import read_manifest

    result = pretrain(
        _config("model.num_classes=3"),
        tmp_path / "three.pth",
        epochs=1,
        num_sites=SITES,
        images_per_site=IMAGES,
        data_dir=phantom_dir,
        matrix_scale=SCALE,
    )

    assert result.card["model"]["class_names"] == ["normal", "benign", "malignant"]
    assert result.card["phantoms"]["labels"] == "three-class"
    expected = {"normal": 0, "benign": 1, "malignant": 2}
    for site in range(SITES):
        original = {row.image_path: row for row in read_manifest(phantom_dir / f"site_{site}" / "manifest.csv")}
        relabelled = read_manifest(phantom_dir / "three-class" / f"site_{site}" / "manifest.csv")
        assert len(relabelled) == len(original)
        assert {row.label for row in relabelled} <= {0, 1, 2}
        for row in relabelled:
            assert row.label == expected[original[row.image_path].finding]
            assert (row.label == 2) == (original[row.image_path].label == 1)  # malignant stays the last class
    assert (
        build_model("small_cnn", num_classes=3, weights_path=result.weights_path).state_dict()["fc.weight"].shape[0]
        == 3
    )


def test_pretraining_refuses_the_demo_federations_folder(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    with pytest.raises(ConfigError, match=r"federation\.data_dir"):
        pretrain(_config(f"federation.data_dir={demo}"), tmp_path / "w.pth", num_sites=1, data_dir=demo)
    assert not demo.exists()


def test_an_existing_output_is_refused_without_force_before_anything_is_generated(tmp_path: Path) -> None:
    out = tmp_path / "w.pth"
    out.write_bytes(b"keep me")

    with pytest.raises(ConfigError, match="--force"):
        pretrain(_config(), out, data_dir=tmp_path / "phantoms")

    assert out.read_bytes() == b"keep me" and not (tmp_path / "phantoms").exists()


def test_cli_pretrains_prints_the_override_and_refuses_to_overwrite_without_force(
    phantom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main

    out = tmp_path / "cli" / "small.pth"
    argv = [
        "pretrain",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--sites",
        str(SITES),
        "--images-per-site",
        str(IMAGES),
        "--data-dir",
        str(phantom_dir),
        "--matrix-scale",
        str(SCALE),
        *OVERRIDES,
    ]

    assert main(argv) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "epoch 1/1" in printed and "val AUC" in printed
    assert f"model.weights_path={out.resolve()}" in printed
    card = json.loads(card_path(out).read_text(encoding="utf-8"))
    assert card["data"]["image_size"] == SIZE and card["training"]["epochs"] == 1
    written = out.read_bytes()

    assert main(argv) == 2
    assert "already exists" in " ".join(capsys.readouterr().out.split())
    assert out.read_bytes() == written

    assert main([*argv[:-3], "--force", *OVERRIDES, "training.learning_rate=0.05"]) == 0
    card = json.loads(card_path(out).read_text(encoding="utf-8"))
    assert card["training"]["learning_rate"] == 0.05
    assert card["weights"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--epochs", "0"], "--epochs = 0"),
        (["--sites", "0"], "--sites = 0"),
        (["--images-per-site", "3"], "--images-per-site = 3"),
        (["model.name=no_such_net"], "model.name"),
        (["model.num_classes=4"], "model.num_classes"),
    ],
)
def test_cli_bad_input_exits_2_with_one_clear_line(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main

    code = main(["pretrain", "--out", str(tmp_path / "w.pth"), "--data-dir", str(tmp_path / "ph"), *argv])

    assert code == 2
    printed = capsys.readouterr().out
    assert "error:" in printed and expected in printed
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "ph").exists()


def test_cli_help_states_the_defaults_pretrain_uses() -> None:
    from simulations.cli import _parser
    from simulations.pretrain import DEFAULT_DATA_DIR, DEFAULT_EPOCHS, DEFAULT_SITES

    commands = next(a for a in _parser()._actions if a.dest == "command")
    text = commands.choices["pretrain"].format_help()  # type: ignore[union-attr]
    flat = " ".join(text.split())
    assert f"(default {DEFAULT_EPOCHS})" in flat and f"(default {DEFAULT_SITES})" in flat
    assert f"(default {DEFAULT_DATA_DIR})" in flat


def test_val_auc_is_the_last_class_against_the_rest() -> None:
    from simulations.pretrain import _val_auc

    labels = np.array([0, 1, 2, 2, 0, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.95])  # a benign case outscores both cancers: 2 of 8 pairs
    assert _val_auc(labels, scores, 3) == pytest.approx(6 / 8)
    assert np.isnan(_val_auc(np.array([0, 0]), np.array([0.1, 0.2]), 2))
    assert np.isnan(_val_auc(np.array([], dtype=np.int64), np.array([]), 2))


def test_patch_epochs_train_on_lesion_patches_first_and_are_recorded(
    phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simulations.pretrain as module
    from common.data import LesionPatches

    seen: list[str] = []
    real_train = module.train_local

    def spy(model: torch.nn.Module, dataset: object, **kwargs: object) -> object:
        parts = getattr(dataset, "datasets", [dataset])
        seen.append("patches" if all(isinstance(p, LesionPatches) for p in parts) else "images")
        return real_train(model, dataset, **kwargs)

    monkeypatch.setattr(module, "train_local", spy)
    result = pretrain(
        _config("training.patch_size=16"),
        tmp_path / "patched.pth",
        epochs=3,
        patch_epochs=2,
        num_sites=SITES,
        images_per_site=IMAGES,
        data_dir=phantom_dir,
        matrix_scale=SCALE,
    )

    assert seen == ["patches", "patches", "images"]
    assert result.card["training"]["patch_epochs"] == 2 and result.card["training"]["patch_size"] == 16


@pytest.mark.parametrize(("patch_epochs", "extra"), [(3, ()), (1, ("training.patch_size=32",))])
def test_patch_epochs_must_leave_whole_image_epochs_and_fit_the_image(
    tmp_path: Path, patch_epochs: int, extra: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError, match=r"patch"):
        pretrain(_config(*extra), tmp_path / "w.pth", epochs=3, patch_epochs=patch_epochs, data_dir=tmp_path / "p")
    assert not (tmp_path / "p").exists()

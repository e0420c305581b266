"""The typed config: one schema for Hydra and Flower's run-config, strict about keys, types and ranges."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import AppConfig, load_config
from common.errors import ConfigError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_dotted_and_nested_keys_give_the_same_config() -> None:
    flat = load_config({"model.name": "resnet50", "privacy.delta": 1e-5, "strategy.num_rounds": 2})
    nested = load_config({"model": {"name": "resnet50"}, "privacy": {"delta": 1e-5}, "strategy": {"num_rounds": 2}})

    assert flat == nested
    assert flat.model.name == "resnet50" and flat.privacy.delta == 1e-5 and flat.strategy.num_rounds == 2
    assert flat.training == AppConfig().training


def test_flat_round_trip() -> None:
    config = load_config({"seed": 3, "data.image_size": 32, "privacy.mode": "none"})

    assert load_config(config.to_flat()) == config


def test_int_is_accepted_for_float_but_not_bool_for_int() -> None:
    assert load_config({"privacy.noise_multiplier": 2}).privacy.noise_multiplier == 2.0
    with pytest.raises(ConfigError, match=r"'strategy.num_rounds' = True has the wrong type: expected int"):
        load_config({"strategy.num_rounds": True})


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'privacy.noise'"):
        load_config({"privacy.noise": 1.0})


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("privacy.delta", 1.5, r"in \(0, 1\)"),
        ("model.norm", "batchnorm", "'groupnorm' or 'frozen_bn'"),
        ("training.batch_size", 0, ">= 1"),
        ("data.image_size", 8, r"in \[16, 1024\]"),
    ],
)
def test_out_of_range_values_name_key_value_and_rule(key: str, value: object, rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}' = {value!r} is invalid: it must be {rule}"):
        load_config({key: value})


def test_pyproject_run_config_mirrors_the_schema_defaults() -> None:
    """`flwr run` only accepts --run-config keys listed in pyproject, so the two must not drift apart."""
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]

    assert load_config(app_config) == AppConfig()
    assert set(load_config(app_config).to_flat()) == set(AppConfig().to_flat())


def test_hydra_defaults_compose_to_a_valid_config() -> None:
    from simulations.hydra_config import compose_simulation

    config, resources = compose_simulation(["model=small_cnn", "privacy=none", "strategy.num_rounds=2"])

    assert config.model.name == "small_cnn"
    assert config.privacy.mode == "none"
    assert config.strategy.num_rounds == 2
    assert config.output.run_dir.startswith("runs")
    assert resources.cpus_per_site >= 1


def test_hydra_unknown_override_is_a_config_error() -> None:
    from simulations.hydra_config import compose_simulation

    with pytest.raises(ConfigError, match=r"privacy\.nois"):
        compose_simulation(["privacy.nois=2"])


def test_hydra_defaults_equal_the_schema_defaults() -> None:
    """`make demo` (Hydra) and `flwr run .` (pyproject) must run the same federation."""
    from dataclasses import replace

    from simulations.hydra_config import compose_simulation

    config, _ = compose_simulation([])

    assert replace(config, output=replace(config.output, run_dir=AppConfig().output.run_dir)) == AppConfig()


def test_class_names_default_per_class_count_and_parse_a_comma_separated_string() -> None:
    assert load_config({}).model.class_labels == ("benign/normal", "malignant")
    assert load_config({"model.num_classes": 3}).model.class_labels == ("normal", "benign", "malignant")
    assert load_config({"model.num_classes": 4}).model.class_labels == ("class_0", "class_1", "class_2", "class_3")
    named = load_config({"model.num_classes": 2, "model.class_names": "normal, abnormal"})
    assert named.model.class_labels == ("normal", "abnormal")


@pytest.mark.parametrize(
    ("names", "rule"),
    [
        ("normal,malignant", r"3 comma-separated names, one per class index 0..2 \(model.num_classes = 3\)"),
        ("normal,,malignant", "comma-separated names without an empty one"),
        ("a,a,b", "names that are all different"),
    ],
)
def test_class_names_that_do_not_fit_num_classes_are_a_config_error(names: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"'model.class_names' = {names!r} is invalid: it must be {rule}"):
        load_config({"model.num_classes": 3, "model.class_names": names})


def test_an_unknown_model_name_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'model.name' = 'resnet5' is invalid: it must be one of .*resnet50"):
        load_config({"model.name": "resnet5"})


def test_the_schema_accepts_exactly_the_registered_models() -> None:
    """The schema lists the names (so a config is checked without importing torch); they must not drift."""
    from common.config.schema import MODEL_NAMES
    from common.models import available_models

    assert sorted(MODEL_NAMES) == available_models()


FLOAT_KEYS = sorted(key for key, value in AppConfig().to_flat().items() if isinstance(value, float))


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_key_refuses_nan_and_infinity_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}' = {value!r} is invalid: it must be a finite number"):
        load_config({key: value})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("simulation.cpus_per_site=-1", r"'simulation.cpus_per_site' = -1 is invalid: it must be an int >= 1"),
        ("simulation.cpus_per_site=1.5", r"'simulation.cpus_per_site' = 1.5 is invalid"),
        ("simulation.gpus_per_site=nan", r"'simulation.gpus_per_site' = nan is invalid: it must be a finite number"),
        ("simulation.gpus_per_site=-0.5", r"'simulation.gpus_per_site' = -0.5 is invalid"),
        ("+simulation.cpus=2", r"unknown config key\(s\) 'simulation.cpus'"),
        ("privacy.delta=inf", r"'privacy.delta' = inf is invalid: it must be a finite number"),
        ("model.name=resnet5", r"'model.name' = 'resnet5' is invalid"),
    ],
)
def test_simulation_overrides_that_cannot_work_fail_before_the_run_naming_the_key(override: str, message: str) -> None:
    from simulations.hydra_config import compose_simulation

    with pytest.raises(ConfigError, match=message):
        compose_simulation([override])


def test_class_weights_default_to_none_and_take_balanced_or_one_weight_per_class() -> None:
    assert AppConfig().training.class_weights == "none"
    assert load_config({"training.class_weights": "balanced"}).training.class_weights == "balanced"
    assert load_config({"model.num_classes": 3, "training.class_weights": "1, 2,4.5"}).training.class_weights


@pytest.mark.parametrize(
    ("weights", "num_classes", "rule"),
    [
        ("1,2", 3, r"3 comma-separated weights, one per class index 0..2 \(model.num_classes = 3\)"),
        ("1,2,4", 2, r"2 comma-separated weights, one per class index 0..1 \(model.num_classes = 2\)"),
        ("1,0", 2, r"a list of finite weights > 0 \('0' is not\)"),
        ("1,-2", 2, r"a list of finite weights > 0 \('-2' is not\)"),
        ("nan,1", 2, r"a list of finite weights > 0 \('nan' is not\)"),
        ("1,inf", 2, r"a list of finite weights > 0 \('inf' is not\)"),
        ("1;2", 2, r"'none' or 'balanced' or comma-separated numbers, one weight per class \('1;2' is not a number\)"),
        ("inverse", 2, r"'none' or 'balanced' or comma-separated numbers"),
        ("", 2, r"'none' or 'balanced' or comma-separated numbers"),
    ],
)
def test_class_weights_that_cannot_work_are_a_config_error_naming_the_key(
    weights: str, num_classes: int, rule: str
) -> None:
    with pytest.raises(ConfigError, match=rf"'training.class_weights' = {weights!r} is invalid: it must be {rule}"):
        load_config({"model.num_classes": num_classes, "training.class_weights": weights})


def test_class_weights_are_checked_in_hydra_overrides_too() -> None:
    from simulations.hydra_config import compose_simulation

    config, _ = compose_simulation(['training.class_weights="1,3"'])

    assert config.training.class_weights == "1,3"
    with pytest.raises(ConfigError, match=r"'training.class_weights' = '1,2,3' is invalid"):
        compose_simulation(['training.class_weights="1,2,3"'])


def test_every_experiment_preset_composes_into_a_valid_config() -> None:
    """The presets the README's results table cites must keep composing as the schema evolves."""
    from simulations.hydra_config import CONF_DIR, compose_simulation

    presets = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
    assert {"cdd_mvr_scratch", "cdd_mvr_scratch_dp", "mias_scratch", "mias_patch", "cdd_3c_pretrained"} <= set(presets)
    for name in presets:
        config, _ = compose_simulation([f"experiment={name}", "output.run_dir=unused"])
        assert config.federation.synthetic is False, name
        assert (config.privacy.mode == "local") == name.endswith("_dp"), name
        assert not name.endswith("_dp") or config.privacy.target_epsilon == 8.0, name

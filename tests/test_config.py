"""Unit tests for asl_platform.config: loading, overrides, validation errors, built-in configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from asl_platform.config import Config, ConfigError, builtin_config_path, load_config, parse_override

# --------------------------------------------------------------------------- defaults and round trip


def test_defaults_load_and_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    # A few defaults from each section, so a silently changed default is noticed.
    assert cfg.data.root is None
    assert cfg.data.val_fraction == pytest.approx(0.15)
    assert cfg.data.test_fraction == pytest.approx(0.15)
    assert cfg.data.seed == 42
    assert cfg.model.backbone == "resnet50"
    assert cfg.tune.lr == (1e-5, 1e-1)
    assert cfg.tune.batch_size == [64, 128]
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.epochs == 20
    assert cfg.serve.port == 8000
    assert cfg.run.name == "default"
    # The defaults satisfy their own cross-field rules.
    assert cfg.tune.grace_period <= cfg.tune.max_epochs
    assert cfg.data.val_fraction + cfg.data.test_fraction < 1
    # Default config equals a freshly constructed one.
    assert cfg == Config()


def test_run_dir_joins_output_dir_and_name():
    cfg = load_config(None, ["run.output_dir=/tmp/out", "run.name=exp-1"])
    assert str(cfg.run_dir) == "/tmp/out/exp-1"


def test_yaml_round_trip_of_defaults(tmp_path):
    cfg = load_config()
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_yaml_round_trip_of_modified_config(tmp_path):
    cfg = load_config(
        None,
        [
            "data.root=/some/images",
            "data.max_images_per_class=7",
            "model.unfreeze_last_stage=true",
            "tune.lr=[0.001, 0.02]",
            "tune.max_concurrent_trials=2",
            "train.epochs=3",
            "run.name=roundtrip",
        ],
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    loaded = load_config(str(path))  # a str path works as well as a Path
    assert loaded == cfg
    assert loaded.tune.lr == (0.001, 0.02)
    assert loaded.data.max_images_per_class == 7
    assert loaded.model.unfreeze_last_stage is True


def test_yaml_file_partial_sections_keep_other_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 5\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 5
    assert cfg.train.lr == Config().train.lr
    assert cfg.data == Config().data


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    assert load_config(path) == Config()


# --------------------------------------------------------------------------- overrides


def test_overrides_parse_to_the_right_types(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr: 0.5\n  epochs: 4\n")
    cfg = load_config(path, ["train.lr=0.01", "tune.batch_size=[32, 64]"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(0.01)
    assert cfg.tune.batch_size == [32, 64]
    assert all(isinstance(b, int) for b in cfg.tune.batch_size)
    # The key of the file that was not overridden is kept.
    assert cfg.train.epochs == 4


def test_override_types_bool_none_int_tuple():
    cfg = load_config(
        None,
        [
            "train.use_gpu=true",
            "tune.max_concurrent_trials=3",
            "data.max_images_per_class=",  # empty value -> None
            "tune.dropout=[0.1, 0.3]",
            "train.epochs=7",
        ],
    )
    assert cfg.train.use_gpu is True
    assert cfg.tune.max_concurrent_trials == 3
    assert cfg.data.max_images_per_class is None
    assert cfg.tune.dropout == (0.1, 0.3)
    assert isinstance(cfg.train.epochs, int) and cfg.train.epochs == 7


def test_override_scientific_notation_float():
    # PyYAML reads "1e-3" as a string; pydantic must still turn it into a float.
    cfg = load_config(None, ["train.lr=1e-3"])
    assert cfg.train.lr == pytest.approx(1e-3)


def test_later_override_wins():
    cfg = load_config(None, ["train.epochs=3", "train.epochs=9"])
    assert cfg.train.epochs == 9


def test_override_does_not_mutate_file_tree(tmp_path):
    # Loading the same file twice with and without an override: the override must not leak.
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 4\n")
    assert load_config(path, ["train.epochs=9"]).train.epochs == 9
    assert load_config(path).train.epochs == 4


def test_parse_override_splits_key_and_value():
    assert parse_override("train.lr=0.01") == (["train", "lr"], 0.01)
    assert parse_override(" tune.batch_size = [1, 2]") == (["tune", "batch_size"], [1, 2])
    # Only the first "=" splits; the rest is part of the value.
    assert parse_override("run.output_dir=a=b") == (["run", "output_dir"], "a=b")


def test_numeric_looking_string_override_is_accepted():
    cfg = load_config(None, ["run.name=2024"])
    assert cfg.run.name == "2024"


# --------------------------------------------------------------------------- errors


def _error(overrides=(), path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def test_unknown_top_level_section():
    message = _error(["bogus.key=1"])
    assert "bogus" in message
    assert "unknown key" in message


def test_unknown_nested_key():
    message = _error(["train.learning_rate=0.1"])
    assert "train.learning_rate" in message
    assert "unknown key" in message


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  backbon: resnet50\n")
    message = _error(path=path)
    assert "model.backbon" in message
    assert "unknown key" in message
    assert str(path) in message  # the source file is named


def test_wrong_type():
    message = _error(["train.epochs=abc"])
    assert "train.epochs" in message
    assert "integer" in message
    assert "'abc'" in message


def test_wrong_type_for_whole_section(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: 5\n")
    message = _error(path=path)
    assert "data" in message
    assert "dictionary" in message


def test_negative_learning_rate_out_of_range():
    message = _error(["train.lr=-1"])
    assert "train.lr" in message
    assert "greater than 0" in message
    assert "-1" in message


def test_val_fraction_out_of_range():
    message = _error(["data.val_fraction=1.5"])
    assert "data.val_fraction" in message
    assert "less than 1" in message
    assert "1.5" in message


def test_several_errors_are_all_reported():
    message = _error(["train.lr=-1", "serve.port=70000"])
    assert "train.lr" in message
    assert "serve.port" in message


@pytest.mark.parametrize(
    "val,test", [("0.6", "0.4"), ("0.5", "0.5"), ("0.7", "0.6")]
)
def test_fractions_must_leave_training_data(val, test):
    message = _error([f"data.val_fraction={val}", f"data.test_fraction={test}"])
    assert "data.test_fraction: val_fraction" in message
    assert "must be < 1" in message


def test_fractions_just_below_one_are_accepted():
    cfg = load_config(None, ["data.val_fraction=0.5", "data.test_fraction=0.49"])
    assert cfg.data.val_fraction + cfg.data.test_fraction < 1


@pytest.mark.parametrize("name", ["lr", "eps", "weight_decay", "dropout"])
def test_tune_range_lower_above_upper(name):
    message = _error([f"tune.{name}=[0.5, 0.1]"])
    assert f"tune.{name}: lower bound 0.5 is above upper bound 0.1" in message


def test_tune_log_range_must_be_positive():
    message = _error(["tune.lr=[0, 0.1]"])
    assert "tune" in message and "lr" in message
    assert "> 0" in message


def test_tune_range_with_wrong_length():
    message = _error(["tune.lr=[0.1]"])
    assert "tune.lr" in message


def test_grace_period_above_max_epochs():
    message = _error(["tune.max_epochs=5", "tune.grace_period=6"])
    assert "tune" in message
    assert "tune.grace_period: 6 must be <= max_epochs (5)" in message


def test_grace_period_equal_to_max_epochs_is_fine():
    cfg = load_config(None, ["tune.max_epochs=5", "tune.grace_period=5"])
    assert cfg.tune.grace_period == cfg.tune.max_epochs == 5


def test_malformed_override_without_equals():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lr"])
    message = str(info.value)
    assert "'train.lr'" in message
    assert "section.key=value" in message


@pytest.mark.parametrize("text", ["lr=0.01", "=0.01", ".=1"])
def test_override_with_a_single_path_part(text):
    with pytest.raises(ConfigError) as info:
        load_config(None, [text])
    message = str(info.value)
    assert repr(text) in message
    assert "section.key" in message


def test_override_with_invalid_yaml_value():
    with pytest.raises(ConfigError) as info:
        parse_override("tune.batch_size=[1, 2")
    assert "not valid YAML" in str(info.value)
    assert "tune.batch_size" in str(info.value)


def test_override_into_a_non_section(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.seed=1"])
    assert "data is not a section" in str(info.value)


def test_run_name_pattern_rejected():
    message = _error(["run.name=bad name/with slash"])
    assert "run.name" in message
    assert "pattern" in message


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert "not found" in str(info.value)
    assert str(missing) in str(info.value)


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "not found" in str(info.value)


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("3\n", "int")])
def test_yaml_that_is_not_a_mapping(tmp_path, text, kind):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "mapping" in message
    assert kind in message


def test_invalid_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: [1, 2\n  lr: : :\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "not valid YAML" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_validate_assignment_rejects_bad_value():
    cfg = load_config()
    with pytest.raises(ValueError):
        cfg.train.lr = -5
    assert cfg.train.lr == pytest.approx(1e-3)


# --------------------------------------------------------------------------- built-in configs


def test_builtin_smoke_config_exists_and_loads():
    path = builtin_config_path("smoke")
    assert path.is_file()
    assert path.name == "smoke.yaml"
    cfg = load_config(path)
    assert cfg.model.backbone == "efficientnet_lite0"
    assert cfg.data.root is None
    assert cfg.run.name == "smoke"
    assert cfg.tune.grace_period <= cfg.tune.max_epochs


def test_builtin_smoke_config_accepts_overrides():
    cfg = load_config(builtin_config_path("smoke"), ["train.epochs=1"])
    assert cfg.train.epochs == 1
    assert cfg.model.backbone == "efficientnet_lite0"


def test_unknown_builtin_config():
    with pytest.raises(ConfigError) as info:
        builtin_config_path("does-not-exist")
    assert "does-not-exist" in str(info.value)


def test_unknown_backbone_is_a_config_error():
    message = _error(["model.backbone=vgg16"])
    assert "model.backbone" in message and "unknown backbone 'vgg16'" in message and "efficientnet_lite0" in message


@pytest.mark.parametrize("override,where,why", [
    ("tune.batch_size=[]", "tune.batch_size:", "at least 1 item"),
    ("tune.hidden_size=[0, 64]", "tune.hidden_size.0:", "greater than or equal to 1 (got 0)"),
    ("tune.batch_size=[64, -1]", "tune.batch_size.1:", "greater than or equal to 1 (got -1)"),
])
def test_tune_choice_lists_are_validated(override, where, why):
    message = _error([override])
    assert where in message and why in message


def test_flag_values_are_taken_as_text_not_yaml():
    """--data "/data/asl #2" must not lose the part after '#', nor 'null' become None."""
    cfg = load_config(None, values={"data.root": "/data/asl #2", "run.output_dir": "null"})
    assert cfg.data.root == "/data/asl #2" and cfg.run.output_dir == "null"


def test_every_key_is_described_and_the_docs_reference_is_the_generated_one():
    from asl_platform.config import Config, config_reference

    undescribed = [f"{section}.{key}" for section, field in Config.model_fields.items()
                   for key, item in field.annotation.model_fields.items() if not item.description]
    assert undescribed == []
    docs = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    generated = docs.split("<!-- reference: start -->\n")[1].split("<!-- reference: end -->")[0]
    assert generated == config_reference(), "docs/configuration.md is stale: paste `asl-platform config --reference`"
    assert "| `balance_sources` | `true` |" in generated and "### `serve`" in generated


def test_the_config_command_prints_the_reference(capsys):
    from asl_platform.cli import main

    assert main(["config", "--reference"]) == 0
    out = capsys.readouterr().out
    assert "### `train`" in out and "| `lr` | `0.001` |" in out


def test_a_removed_serve_key_is_refused_with_what_replaced_it():
    from asl_platform.config import ServeConfig

    with pytest.raises(ValueError, match="spell_min_probability: removed: one \"not sure\" rule"):
        ServeConfig.model_validate({"spell_min_probability": 0.6})


def test_the_int8_quantization_images_key_and_flag_are_refused_under_their_old_calibration_names(tmp_path, capsys):
    """"Calibration" names a learner's profile only: the old names of int8's quantization images are refused with
    the new ones in the message, in a config file, in --set and on export-onnx's command line."""
    from asl_platform.cli import main
    from asl_platform.config import InferenceConfig

    assert InferenceConfig(quantization_images=40).quantization_images == 40
    with pytest.raises(ValueError, match="inference.calibration_images is now inference.quantization_images"):
        InferenceConfig.model_validate({"calibration_images": 40})
    config = tmp_path / "old.yaml"
    config.write_text("inference:\n  calibration_images: 40\n")
    with pytest.raises(ConfigError, match="quantization_images"):
        load_config(str(config), [])
    with pytest.raises(ConfigError, match="quantization_images"):
        load_config(None, ["inference.calibration_images=40"])
    with pytest.raises(SystemExit) as refused:
        main(["export-onnx", "--model", str(tmp_path), "--calibration-images", "40"])
    assert refused.value.code == 2 and "--calibration-images is now --quantization-images" in capsys.readouterr().err

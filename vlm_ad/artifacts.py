"""One save/load style for every folder a user keeps: a JSON file that names its ``kind`` and ``format_version``
beside safetensors files, each written atomically. Reading checks both, so a future change of format can refuse (or
migrate) an old folder with a clear message instead of failing somewhere inside.

==================  =====================  ==============================  =======
kind                JSON file              written by                      version
==================  =====================  ==============================  =======
detector            detector.json          ``Detector.save`` (vlm-ad fit)  1
adapter             adapt.json             ``save_adapter`` (vlm-ad adapt)  1
video-model         video_model.json       ``VideoModel.save``             1
defect-library      library.json           ``DefectLibrary.save``          1
export              export.json            ``export_model`` (vlm-ad export) 1
==================  =====================  ==============================  =======

Folders written before format versions existed carry none and are read as version 1.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.errors import ConfigError, DataError

__all__ = ["fingerprint", "read_artifact", "read_meta", "write_meta"]


def write_meta(path: str | Path, *, kind: str, version: int, meta: dict[str, Any]) -> None:
    """Write ``meta`` as JSON at ``path`` (atomically), stamped with its ``kind`` and ``format_version``."""
    record = {"kind": kind, "format_version": int(version), **meta}
    atomic_write_bytes(Path(path), json.dumps(record, indent=2).encode())


def read_meta(path: str | Path, *, kind: str, version: int, remedy: str, what: str | None = None) -> dict[str, Any]:
    """Read a JSON file written by :func:`write_meta` and check its kind and format version.

    Args:
        path: the JSON file.
        kind: the kind expected there.
        version: the newest format version this code reads.
        remedy: how to make a good folder, for the error messages (e.g. "create one with 'vlm-ad fit'").
        what: the folder's name in messages (default: "saved <kind>").

    Raises:
        DataError: the file is missing.
        ConfigError: it is not JSON, is of another kind, or of a format version this code does not read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path.parent} is not a {what or 'saved ' + kind}: {path.name} is missing ({remedy})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); {remedy}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} must hold a JSON object; {remedy}")
    if meta.get("kind", kind) != kind:
        raise ConfigError(f"{path} holds a {meta['kind']!r}, not a {kind!r}; give the folder of a {kind}")
    found = meta.get("format_version", 1)
    if not isinstance(found, int) or found < 1:
        raise ConfigError(f"{path}: format_version must be a positive integer, got {found!r}; {remedy}")
    if found > version:
        raise ConfigError(f"{path} has format version {found}, newer than this vlm-ad reads (up to {version}); "
                          "upgrade vlm-ad")
    if found < version:
        raise ConfigError(f"{path} has the old format version {found} (this vlm-ad reads {version}); {remedy}")
    return meta


def read_artifact(directory: str | Path, meta_name: str, tensors_name: str, *, kind: str, version: int, remedy: str,
                  what: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked JSON (:func:`read_meta`) and the torch tensors of a folder's ``meta_name`` and ``tensors_name``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_meta(directory / meta_name, kind=kind, version=version, remedy=remedy, what=what)
    path = directory / tensors_name
    if not path.is_file():
        raise DataError(f"{directory} is not a {what or 'saved ' + kind}: {tensors_name} is missing ({remedy})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); {remedy}") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise DataError(f"{path} holds NaN or infinite values in {', '.join(bad)}; the folder is corrupt ({remedy})")
    return meta, tensors


def fingerprint(directory: str | Path) -> str:
    """SHA-256 over the names and bytes of every file in a saved folder (sorted): the folder's identity."""
    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

"""The memory bank on disk and the faiss index behind it, as numpy (no torch), shared by
:class:`~vlm_ad.retrieval.ExemplarStore` and the exported runtime (:mod:`vlm_ad.runtime`) so both read and search
alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlm_ad._deps import require
from vlm_ad.errors import DataError

AUTO_EXACT_ROWS = 16384  # index="auto": exact search up to this many bank rows, HNSW above


def faiss_index(bank: np.ndarray, kind: str, *, ef_search: int = 32, what: str = "the exemplar store") -> Any:
    """A faiss index over (N, D) float32 ``bank`` rows: ``"exact"`` (flat L2), ``"ivf"``, ``"hnsw"`` or ``"auto"``
    (exact up to :data:`AUTO_EXACT_ROWS` rows, HNSW above); banks under 4,096 rows are always searched exactly."""
    faiss = require("faiss", what)
    x = np.ascontiguousarray(bank, dtype=np.float32)
    d = x.shape[1]
    if kind == "auto":
        kind = "exact" if len(x) <= AUTO_EXACT_ROWS else "hnsw"
    if kind == "exact" or len(x) < 4096:
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = int(min(4 * np.sqrt(len(x)), len(x) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.train(x)
        index.nprobe = max(1, nlist // 16)
    else:
        index = faiss.IndexHNSWFlat(d, 16)
        index.hnsw.efSearch = ef_search
    index.add(x)
    return index


def read_bank(directory: str | Path, *, remedy: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The memory bank written by :meth:`vlm_ad.retrieval.ExemplarStore.save` in ``directory``: (``store.json``'s
    settings and ``image_ids``, the (N, C) bank, its (N, 3) int tags: image index, row, column).

    Raises:
        DataError: a file is missing, torn or malformed, or the bank holds NaN/inf; the message names the file and
            ends with ``remedy``.
    """
    from safetensors.numpy import load_file

    directory = Path(directory)
    paths = [directory / "store.json", directory / "store.safetensors"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{directory} is not an exemplar store: missing {', '.join(missing)}; {remedy}")
    try:
        meta = json.loads(paths[0].read_text())
        meta["image_ids"], meta["index"] = list(meta["image_ids"]), str(meta["index"])
    except (ValueError, KeyError, TypeError) as exc:  # torn JSON, or not a store's
        raise DataError(f"{paths[0]} cannot be read ({type(exc).__name__}: {exc}); {remedy}") from None
    try:
        tensors = load_file(str(paths[1]))
        bank, tags = tensors["bank"], tensors["tags"]
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on torn files
        raise DataError(f"{paths[1]} cannot be read ({type(exc).__name__}: {exc}); {remedy}") from None
    if bank.ndim != 2 or tags.shape != (len(bank), 3) or not len(bank):
        raise DataError(f"{paths[1]} holds a bank of shape {bank.shape} with tags of shape {tags.shape} (expected "
                        f"(N, C) and (N, 3), N > 0); {remedy}")
    if not np.isfinite(bank).all():
        raise DataError(f"{paths[1]} holds NaN or infinite values in its memory bank; {remedy}")
    return meta, bank, tags

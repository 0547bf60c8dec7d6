"""The faiss index behind a memory bank, built from a numpy array (no torch), shared by
:class:`~vlm_ad.retrieval.ExemplarStore` and the exported runtime (:mod:`vlm_ad.runtime`) so both search alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_ad._deps import require

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

"""``ExemplarStore``: a faiss index over normal patch features that remembers where every patch came from.

Every hit names the exemplar's image id, its patch location and the distance, so later stages can show the
user the nearest normal exemplar behind a judgment. Distances are Euclidean (L2), not squared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vlm_ad._cache import atomic_write_bytes
from vlm_ad._index import AUTO_EXACT_ROWS  # noqa: F401 - re-exported: exact search up to it, HNSW above
from vlm_ad.errors import ConfigError, DataError, NotFittedError
from vlm_ad.types import ExemplarHit

__all__ = ["ExemplarStore", "greedy_coreset"]

_INDEXES = ("auto", "exact", "ivf", "hnsw")


CORESET_BUDGET = 4e9  # greedy_coreset: total (points x centres / chunks); about 1.5 minutes of one core at 64 dims


def greedy_coreset(
    x: torch.Tensor, n: int, *, proj_dim: int = 64, chunk: int | None = None, budget: float = CORESET_BUDGET,
    seed: int = 0,
) -> torch.Tensor:
    """Greedy k-center (PatchCore) subsampling, split into chunks only when one pass would cost too much.

    The points are randomly projected to ``proj_dim`` dimensions (distances are kept up to a small factor by
    Johnson-Lindenstrauss). One greedy pass over all ``N`` points (every new centre is the point farthest from those
    already chosen) costs ``N * n * proj_dim``; when ``N * n`` exceeds ``budget`` the points are split into the fewest
    random chunks ``k`` that bring the total cost ``N * n / k`` within it, each chunk picking its share of the ``n``
    centres (so a fit never costs more than about 1.5 minutes of one core). Fewer, larger chunks cover better: on
    the full-shot magnetic_tile bank at 1% (596k patches, 5,966 centres), 146 chunks of 4,096 gave image AUROC 0.920,
    3 chunks 0.956 and one pass 0.966 (598k patches, 5,980 centres: 92 s on one core, 43 s on two). Memory is the
    (N, proj_dim) projection plus two N-vectors.

    Args:
        x: (N, D) features.
        n: number of points to keep (1 <= n <= N).
        proj_dim: dimension of the random projection (0 = no projection).
        chunk: points per chunk (overrides ``budget``).
        budget: largest total ``points x centres / chunks``.
        seed: seed of the projection, the chunks and each chunk's first centre.

    Returns:
        (n,) int64 indices into ``x``.
    """
    total = x.shape[0]
    if not 1 <= n <= total:
        raise ConfigError(f"coreset size must be in [1, {total}], got {n}")
    gen = torch.Generator().manual_seed(seed)
    if proj_dim and proj_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], proj_dim, generator=gen) / proj_dim**0.5
        z = (x.float() @ proj).numpy()  # (N, proj_dim)
    else:
        z = x.float().numpy()
    perm = torch.randperm(total, generator=gen)  # chunks are random, so each covers the whole distribution
    # k chunks cost k * (total / k) * (n / k) = total * n / k
    n_chunks = max(1, -(-total // chunk) if chunk is not None else int(np.ceil(total * n / budget)))
    picked = []
    for c, part in enumerate(torch.tensor_split(perm, n_chunks)):
        share = round(n * (c + 1) / n_chunks) - round(n * c / n_chunks)
        if share:
            first = int(torch.randint(len(part), (1,), generator=gen))
            picked.append(part[torch.from_numpy(_greedy(z[part.numpy()], share, first))])
    return torch.cat(picked)


def _greedy(z: np.ndarray, n: int, first: int) -> np.ndarray:
    """Farthest-point selection of ``n`` rows of ``z`` (M, d), starting from row ``first``: one matrix-vector product
    over every row per new centre, BLAS on torch's thread count (``torch.get_num_threads()``). numpy, not torch: the
    loop is dominated by per-call overhead, lower in numpy.

    A triangle-inequality skip on one thread (rows the new centre provably cannot get nearer to are not recomputed)
    was tried and removed: on magnetic_tile's full-shot patches it skipped few rows and gathering the rest cost more
    than the product it saved (coreset 191 s vs 35 s for this loop on two threads, eval/results/fit_time_magnetic.md);
    on brick texture it was level (eval/results/fit_time.md).
    """
    from threadpoolctl import threadpool_limits

    sq = np.einsum("ij,ij->i", z, z)  # (M,)
    mind = np.full(z.shape[0], np.inf, dtype=z.dtype)  # squared distance to the nearest chosen centre
    out = np.empty(n, dtype=np.int64)
    idx = first
    with threadpool_limits(max(1, torch.get_num_threads())):
        for i in range(n):
            out[i] = idx
            d = z @ z[idx]  # squared distances to the new centre: |p|^2 - 2 p.c + |c|^2
            d *= -2
            d += sq
            d += sq[idx]
            np.minimum(mind, d, out=mind)
            idx = int(mind.argmax())
    return out


class ExemplarStore:
    """Patch features of normal images in a faiss index, each row tagged (image, row, col).

    Args:
        index: ``"exact"`` (flat L2), ``"ivf"`` (inverted lists, approximate), ``"hnsw"`` (graph, approximate:
            M=16, ``ef_search`` candidates) or ``"auto"`` (default: exact up to 16,384 rows, HNSW above). Measured
            on a full-shot magnetic_tile bank (59,662 rows x 152 dims, 1 thread): exact 363 ms per image (784
            queries), HNSW ef_search=32 36 ms with image AUROC 0.961 vs 0.963 (mean distance error 0.07%).
        ef_search: HNSW search breadth (higher = closer to exact, slower).
        coreset: fraction of patches kept by greedy k-center subsampling (None or 1.0 = keep all).
        coreset_dim: random-projection dimension used by the coreset.
        seed: seed of the coreset.
    """

    def __init__(
        self, *, index: str = "auto", coreset: float | None = None, coreset_dim: int = 64, seed: int = 0,
        ef_search: int = 32,
    ) -> None:
        if index not in _INDEXES:
            raise ConfigError(f"index must be one of {_INDEXES}, got {index!r}")
        if coreset is not None and not 0 < coreset <= 1:
            raise ConfigError(f"coreset must be a fraction in (0, 1], got {coreset}")
        if ef_search < 1:
            raise ConfigError(f"ef_search must be >= 1, got {ef_search}")
        self.index_kind = index
        self.ef_search = ef_search
        self.coreset = coreset
        self.coreset_dim = coreset_dim
        self.seed = seed
        self.image_ids: list[str] = []
        self._pending: list[tuple[int, torch.Tensor]] = []
        self.bank_: torch.Tensor | None = None
        self._index = None

    # building -----------------------------------------------------------------------------------------
    def add(self, image_id: str, grid: torch.Tensor) -> None:
        """Queue the patch grid (h, w, C) of one normal image; :meth:`build` indexes everything queued."""
        if grid.ndim != 3:
            raise DataError(f"add() expects an (h, w, C) patch grid, got shape {tuple(grid.shape)}")
        self.image_ids.append(str(image_id))
        self._pending.append((len(self.image_ids) - 1, grid.detach().float().cpu()))

    def build(self) -> ExemplarStore:
        """Concatenate the queued grids, subsample them (coreset) and build the faiss index; returns self."""
        if not self._pending:
            raise DataError("the exemplar store is empty: add() at least one normal image before build()")
        feats, meta = [], []
        for img, grid in self._pending:
            h, w, c = grid.shape
            rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            feats.append(grid.reshape(-1, c))
            meta.append(torch.stack([torch.full((h * w,), img), rows.reshape(-1), cols.reshape(-1)], 1))
        bank, tags = torch.cat(feats), torch.cat(meta).int()  # (N, C), (N, 3)
        if self.coreset is not None and self.coreset < 1:
            keep = greedy_coreset(bank, max(1, round(self.coreset * len(bank))), proj_dim=self.coreset_dim,
                                  seed=self.seed)
            bank, tags = bank[keep], tags[keep]
        self._pending = []
        self._set_bank(bank.contiguous(), tags)
        return self

    def _set_bank(self, bank: torch.Tensor, tags: torch.Tensor) -> None:
        from vlm_ad._index import faiss_index

        self.bank_, self.tags_ = bank, tags
        self._index = faiss_index(bank.numpy(), self.index_kind, ef_search=self.ef_search)

    # querying -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return 0 if self.bank_ is None else len(self.bank_)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest exemplars of (M, C) queries: (M, k) L2 distances and (M, k) bank rows (ascending)."""
        if self._index is None:
            raise NotFittedError("the exemplar store has no index yet: call build() (or load()) first")
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy(), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.bank_.shape[1]:
            raise DataError(f"queries must be (M, {self.bank_.shape[1]}), got {q.shape}")
        dist, rows = self._index.search(q, min(k, len(self)))
        return torch.from_numpy(np.sqrt(np.maximum(dist, 0))), torch.from_numpy(rows)

    def hit(self, row: int, distance: float) -> ExemplarHit:
        """The :class:`ExemplarHit` of bank row ``row`` found at ``distance``."""
        img, r, c = (int(v) for v in self.tags_[row])
        return ExemplarHit(self.image_ids[img], r, c, float(distance))

    def image_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The image index (into ``image_ids``) of each bank row."""
        return self.tags_[rows.long(), 0]

    # persistence --------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``store.safetensors`` (bank + tags) and ``store.json`` (ids, settings), each atomically."""
        from safetensors.torch import save

        if self.bank_ is None:
            raise NotFittedError("nothing to save: build() the store first")
        directory = Path(directory)
        atomic_write_bytes(directory / "store.safetensors", save({"bank": self.bank_, "tags": self.tags_}))
        meta = {"index": self.index_kind, "ef_search": self.ef_search, "coreset": self.coreset,
                "coreset_dim": self.coreset_dim, "seed": self.seed, "image_ids": self.image_ids}
        atomic_write_bytes(directory / "store.json", json.dumps(meta).encode())

    @classmethod
    def load(cls, directory: str | Path) -> ExemplarStore:
        """Read a store written by :meth:`save` and rebuild its index (a missing, torn or corrupt file raises
        :class:`~vlm_ad.errors.DataError`)."""
        from vlm_ad._index import read_bank

        meta, bank, tags = read_bank(directory, remedy="re-create the model")
        store = cls(index=meta["index"], coreset=meta["coreset"], coreset_dim=meta["coreset_dim"], seed=meta["seed"],
                    ef_search=meta.get("ef_search", 32))
        store.image_ids = meta["image_ids"]
        store._set_bank(torch.from_numpy(bank), torch.from_numpy(tags))
        return store


"""Input geometry: how an image of any size and aspect ratio becomes a backbone input, and, for large inputs,
overlapping tiles whose feature grids are stitched back into one grid.

``aspect``  keep the aspect ratio: the long side becomes ``size``, the short side is rounded to a multiple of the
            backbone's ``patch_multiple`` (so a 500 x 1250 crack image is seen at 96 x 256, not squashed to 224 x 224)
``area``    keep the aspect ratio at the pixel count of a ``size`` x ``size`` square (the same compute as ``square``;
            a 500 x 1250 image is seen at 160 x 400 for size 256), the long side capped at ``4 * size``
``square``  squash every image to ``size`` x ``size`` (the behaviour of models saved before geometry existed)
``shape``   a fixed (H, W) input for every image (PaDiM's per-position statistics need one grid)

``min_side`` (``aspect`` and ``area``): the short side is at least ``min_side`` (the long side grows with it, up to
``4 * size``), so an elongated image is not seen thinner across than the backbone's native resolution: at ``area``
280 with ``min_side`` 224 a 320 x 800 image is seen at 224 x 560 instead of 182 x 448.

``max_downscale`` (``aspect`` and ``area``): the long side is at least the image's long side over ``max_downscale``
(again up to ``4 * size``), so a large image with small defects is not shrunk beyond that: at ``area`` 280 with
``max_downscale`` 4 a 1536 x 2048 image is seen at 392 x 518 instead of 238 x 322; images up to 4 x the input it
would get anyway are unchanged.

With ``tile=T``, an input larger than ``T`` on a side is cut into overlapping ``T``-px tiles (at most ``T`` x ``T``, the
backbone's native resolution), each tile is embedded alone, and every feature cell is taken from the tile whose
centre is nearest to it, so a large image keeps its full resolution without one huge forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vlm_ad._shapes import describe_input, input_shape
from vlm_ad.errors import ConfigError

__all__ = ["GEOMETRIES", "Geometry", "stitch", "tile_starts"]

GEOMETRIES = ("aspect", "area", "square")


@dataclass(frozen=True)
class Geometry:
    """How images are resized (and tiled) before the backbone.

    Attributes:
        mode: ``"aspect"``, ``"area"`` or ``"square"`` (see the module docstring).
        size: the long side (``aspect``), the side of the square of equal area (``area``) or the side (``square``)
            of the input, in pixels.
        multiple: input sides are multiples of it (the backbone's ``patch_multiple``).
        tile: tile side in input pixels (a multiple of ``multiple``); None embeds the whole input at once.
        overlap: share of a tile's side that neighbouring tiles overlap at least.
        shape: a fixed (H, W) input for every image; overrides ``mode`` and ``size``.
        min_side: the least short side of ``aspect`` and ``area`` inputs, in pixels (None: no minimum).
        max_downscale: the most an ``aspect`` or ``area`` input shrinks the image's long side (None: no limit).
    """

    mode: str = "aspect"
    size: int = 256
    multiple: int = 1
    tile: int | None = None
    overlap: float = 0.25
    shape: tuple[int, int] | None = None
    min_side: int | None = None
    max_downscale: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in GEOMETRIES:
            raise ConfigError(f"geometry must be one of {GEOMETRIES}, got {self.mode!r}")
        m = self.multiple
        if self.size <= 0 or self.size % m:
            raise ConfigError(f"image_size must be a positive multiple of {m}, got {self.size}")
        if self.tile is not None and (self.tile <= 0 or self.tile % m):
            raise ConfigError(f"tile must be a positive multiple of {m} (or None), got {self.tile}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"tile overlap must be in [0, 1), got {self.overlap}")
        if self.shape is not None and any(s <= 0 or s % m for s in self.shape):
            raise ConfigError(f"a fixed input shape needs positive multiples of {m}, got {self.shape}")
        if self.min_side is not None and (self.min_side <= 0 or self.mode == "square"):
            raise ConfigError(f"min_side (the least short side, px) must be positive and applies to the aspect and "
                              f"area geometries; got {self.min_side} with geometry {self.mode!r}")
        if self.max_downscale is not None and (self.max_downscale < 1 or self.mode == "square"):
            raise ConfigError(f"max_downscale (the most the long side shrinks) must be at least 1 and applies to the "
                              f"aspect and area geometries; got {self.max_downscale} with geometry {self.mode!r}")

    def describe(self) -> str:
        """The input in words, e.g. ``"area 280 px, short side at least 224 px, shrunk at most 3x"``."""
        return describe_input(self.mode, self.size, min_side=self.min_side, max_downscale=self.max_downscale,
                              tile=self.tile)

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) input an image of ``height`` x ``width`` pixels is resized to."""
        return input_shape(self.mode, self.size, self.multiple, height, width, shape=self.shape,
                           min_side=self.min_side, max_downscale=self.max_downscale)

    def tiles(self, shape: tuple[int, int]) -> tuple[tuple[int, int], list[int], list[int]]:
        """Tile (h, w) and the row and column starts of the tiles covering an input of ``shape``."""
        if self.tile is None:
            return tuple(shape), [0], [0]
        th, tw = min(shape[0], self.tile), min(shape[1], self.tile)
        return (th, tw), tile_starts(shape[0], th, self.multiple, self.overlap), \
            tile_starts(shape[1], tw, self.multiple, self.overlap)


def tile_starts(length: int, tile: int, multiple: int, overlap: float) -> list[int]:
    """Starts (multiples of ``multiple``) of tiles of side ``tile`` covering ``length``, evenly spread, with at
    least ``overlap * tile`` shared between neighbours; the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / max(tile * (1 - overlap), 1)) + 1
    last = length - tile
    starts = sorted({min(last, int(round(i * last / (n - 1) / multiple)) * multiple) for i in range(n)})
    return starts


def _owners(n_cells: int, cell: float, starts: list[int], tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell along one axis: the tile whose centre is nearest, and the cell's index inside that tile."""
    centres = (torch.arange(n_cells, dtype=torch.float64) + 0.5) * cell  # (n,) in input pixels
    mids = torch.tensor([s + tile / 2 for s in starts], dtype=torch.float64)  # (T,)
    owner = (centres[:, None] - mids[None]).abs().argmin(dim=1)  # (n,)
    offset = torch.round(torch.tensor(starts, dtype=torch.float64)[owner] / cell).long()  # tile start, in cells
    local = torch.floor(centres / cell).long() - offset
    return owner, local


def stitch(tile_layers: dict[str, torch.Tensor], shape: tuple[int, int], tile_hw: tuple[int, int],
           rows: list[int], cols: list[int]) -> dict[str, torch.Tensor]:
    """Stitch per-tile features ``{layer: (n_rows * n_cols, C, th, tw)}`` (row-major tiles) into
    ``{layer: (1, C, H / stride, W / stride)}`` for an input of ``shape``; each cell comes from its nearest tile."""
    out = {}
    for name, t in tile_layers.items():
        cell_h, cell_w = tile_hw[0] / t.shape[-2], tile_hw[1] / t.shape[-1]  # the layer's stride in pixels
        gh, gw = round(shape[0] / cell_h), round(shape[1] / cell_w)
        ty, ly = _owners(gh, cell_h, rows, tile_hw[0])
        tx, lx = _owners(gw, cell_w, cols, tile_hw[1])
        ly, lx = ly.clamp(0, t.shape[-2] - 1), lx.clamp(0, t.shape[-1] - 1)
        which = ty[:, None] * len(cols) + tx[None, :]  # (gh, gw) tile index
        grid = t.permute(0, 2, 3, 1)[which, ly[:, None], lx[None, :]]  # (gh, gw, C)
        out[name] = grid.permute(2, 0, 1)[None].contiguous()  # (1, C, gh, gw)
    return out

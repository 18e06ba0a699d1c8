"""TOAST's two passes beside its attribution maps on the gallery images (docs/ATTRIBUTION.md figure).

Columns: the image; CLS attention of the last block in the bottom-up and in the top-down pass; the four
attribution kinds for the predicted class (gae, legrad, gradcam: top-down pass given the bottom-up pass;
attnlrp: both passes and the feedback path, signed, diverging scale). Also a linear-probe row per image
for the same kinds (one pass), to compare with a single-pass model on the same backbone.

    python scripts/figure_attribution.py --out docs/attribution/toast_gallery.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from toast_core import maps  # noqa: E402
from toast_core.io.checkpoints import load_checkpoint  # noqa: E402
from toast_core.io.images import image_to_tensor, load_image  # noqa: E402
from toast_core.models import data_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("gae", "legrad", "gradcam", "attnlrp")


def gallery(n: int) -> tuple[list, list[str]]:
    samples = ROOT / "assets" / "demo_samples"
    paths = sorted(p for p in samples.glob("*.png") if not p.stem.endswith("_mask"))[:n]
    return [load_image(p) for p in paths], [p.stem for p in paths]


def maps_of(model, x: torch.Tensor) -> dict:
    out = {}
    for kind in KINDS:
        m, res = maps.maps_for(model, x, kind)
        out[kind] = m
    out["passes"] = res.passes
    out["cls"] = {p: res.cls[p][-1] for p in res.passes}
    out["pred"] = res.logits.argmax(-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "attribution" / "toast_gallery.png"))
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ckpts = ROOT / "assets" / "checkpoints"
    toast, linear = load_checkpoint(ckpts / "toast"), load_checkpoint(ckpts / "linear")
    size = int(toast.vit.patch_embed.img_size[0])  # the size both were trained at (as compare.images reads it)
    if tuple(linear.vit.patch_embed.img_size) != tuple(toast.vit.patch_embed.img_size):
        raise SystemExit("the shipped TOAST and linear probe were trained at different input sizes")
    cfg = data_config(toast)
    images, names = gallery(args.images)
    x = torch.stack([image_to_tensor(im, size, cfg["mean"], cfg["std"]) for im in images])
    classes = json.loads((ROOT / "assets" / "demo_samples" / "samples.json").read_text())["class_names"]
    rows = [("TOAST", maps_of(toast, x)), ("linear", maps_of(linear, x))]
    cols = ["image", "CLS attn · bottom-up", "CLS attn · final pass", "GAE", "LeGrad", "Grad-CAM", "AttnLRP (signed)"]
    fig, axes = plt.subplots(2 * len(images), len(cols), figsize=(2.0 * len(cols), 2.1 * 2 * len(images)))
    for i, im in enumerate(images):
        for r, (label, m) in enumerate(rows):
            ax = axes[2 * i + r]
            ax[0].imshow(im.resize((size, size)))
            ax[0].set_title(f"{names[i]} · {label}: {classes[int(m['pred'][i])]}", fontsize=7)
            passes = m["passes"]
            if len(passes) > 1:
                ax[1].imshow(m["cls"][passes[0]][i].numpy(), cmap="viridis")
            else:
                ax[1].axis("off")
            ax[2].imshow(m["cls"][passes[-1]][i].numpy(), cmap="viridis")
            for j, kind in enumerate(KINDS):
                a = m[kind][i].numpy()
                if kind in maps.SIGNED_KINDS:
                    lim = float(np.abs(a).max()) or 1.0
                    ax[3 + j].imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim)
                else:
                    ax[3 + j].imshow(a, cmap="viridis")
            if i == 0 and r == 0:
                for j in range(1, len(cols)):
                    ax[j].set_title(cols[j], fontsize=7)
            for a in ax:
                a.set_xticks([])
                a.set_yticks([])
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

"""Report figures and image conversion: landmarks drawn on crops, contact sheets, training curves, uint8 frames."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipeline.io import atomic_path

if TYPE_CHECKING:
    import torch

# 68-point iBUG groups, drawn as polylines (closed for eyes and lips).
LANDMARK_GROUPS: tuple[tuple[int, int, bool], ...] = (
    (0, 17, False), (17, 22, False), (22, 27, False), (27, 31, False), (31, 36, False),
    (36, 42, True), (42, 48, True), (48, 60, True), (60, 68, True),
)


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Draw 68 landmarks (68, 2+) on a copy of an RGB uint8 image."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    scale = max(1, round(out.shape[0] / 256))
    pts = np.round(landmarks[:, :2]).astype(np.int32)  # (68, 2)
    for a, b, closed in LANDMARK_GROUPS:
        cv2.polylines(out, [pts[a:b]], closed, color, 1 * scale, cv2.LINE_AA)
    for p in pts:
        cv2.circle(out, (int(p[0]), int(p[1])), 1 * scale, (255, 0, 0), -1, cv2.LINE_AA)
    return out


# Caption fonts, first match per character: DejaVu Sans (Latin, Greek, Cyrillic, ...; Debian `fonts-dejavu-core`,
# also inside matplotlib) then Droid Sans Fallback (CJK; Debian `fonts-droid-fallback`). OpenCV's Hershey fonts
# are ASCII only and print every other character as '?'.
LABEL_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts-droid-fallback/truetype/DroidSansFallback.ttf",
)


@functools.lru_cache(maxsize=8)
def _label_fonts(size: int) -> tuple[tuple[object, frozenset[int]], ...]:
    """(PIL font, code points it has glyphs for) of every available :data:`LABEL_FONTS` entry, matplotlib's DejaVu
    Sans standing in when the system one is missing."""
    import matplotlib
    from fontTools.ttLib import TTFont
    from PIL import ImageFont

    paths = [p for p in LABEL_FONTS if os.path.isfile(p)]
    if not paths or not paths[0].endswith("DejaVuSans.ttf"):
        paths.insert(0, os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
    fonts = []
    for p in paths:
        with TTFont(p, lazy=True) as tt:
            cmap = frozenset(tt.getBestCmap() or {})
        fonts.append((ImageFont.truetype(p, size), cmap))
    return tuple(fonts)


def draw_label(image: np.ndarray, text: str, xy: tuple[int, int], size: int = 11,
               color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Draw `text` (any script the :data:`LABEL_FONTS` cover) with its top-left corner at `xy`, in place; returns
    `image` (RGB uint8). Each run of characters uses the first font that has glyphs for them."""
    from PIL import Image, ImageDraw

    fonts = _label_fonts(size)
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    x, y = xy
    runs: list[tuple[object, str]] = []
    for ch in text:
        font = next((f for f, cmap in fonts if ord(ch) in cmap), fonts[0][0])
        if runs and runs[-1][0] is font:
            runs[-1] = (font, runs[-1][1] + ch)
        else:
            runs.append((font, ch))
    for font, run in runs:
        draw.text((x, y), run, font=font, fill=color)
        x += draw.textlength(run, font=font)
    image[...] = np.asarray(pil)
    return image


def contact_sheet(tiles: Sequence[np.ndarray], labels: Sequence[str], columns: int = 6, tile: int = 160) -> np.ndarray:
    """Grid of RGB tiles (resized to `tile`), each with a caption in any script; returns an RGB uint8 image."""
    import cv2

    n = max(1, len(tiles))
    cols = min(columns, n)
    rows = -(-n // cols)
    cap = 16
    sheet = np.full((rows * (tile + cap), cols * tile, 3), 255, np.uint8)
    for i, (img, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(i, cols)
        y, x = r * (tile + cap), c * tile
        sheet[y:y + tile, x:x + tile] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        cell = np.ascontiguousarray(sheet[y + tile:y + tile + cap, x:x + tile])  # (cap, tile, 3): text is clipped
        sheet[y + tile:y + tile + cap, x:x + tile] = draw_label(cell, label[:28], (2, 1))
    return sheet


def save_png(path: str | Path, image: np.ndarray) -> None:
    import cv2

    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def to_uint8(prediction: "torch.Tensor") -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 (rounded): the one conversion of generated frames."""
    import torch

    x = prediction.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)  # (B, 3, H, W)
    return x.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


class Curves(Protocol):
    """Anything with named scalar series over steps (e.g. :class:`pipeline.train.common.History`)."""

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...


def plot_curves(history: Curves, path: str | os.PathLike[str], panels: Mapping[str, Sequence[str]],
                title: str = "", smooth: int = 1) -> None:
    """One panel per entry ``{panel title: [series names]}``; `smooth` > 1 overlays a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels.items()):
        for key in keys:
            s, v = history.series(key)
            if not len(s):
                continue
            if smooth > 1 and len(v) > smooth:
                ax.plot(s, v, alpha=0.25)
                k = np.ones(smooth) / smooth
                ax.plot(s[smooth - 1:], np.convolve(v, k, mode="valid"), label=key, color=ax.lines[-1].get_color())
            else:
                ax.plot(s, v, marker="." if len(v) < 40 else None, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

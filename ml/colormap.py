"""Heatmap colours without torch: the jet lookup table, the colour layer the platform stores
for a Grad-CAM map, and its composite over the image (what a viewer or a PACS overlay shows).

    layer = heat_layer(cam, (width, height))    # RGBA: jet colour, alpha rising with the map
    composite(gray_image, layer, opacity=0.6)   # RGB: the layer over the image

The layer keeps the image out of the heatmap file, so a viewer can lay it over the image at
any opacity, window and zoom; a cold region is transparent, so the film stays readable
where the model did not look. Importable by the web server and the PACS listener, which
never load torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def jet_lut() -> np.ndarray:
    """(256, 3) uint8 piecewise-linear approximation of matplotlib's 'jet' (blue -> red)."""
    v = np.linspace(0.0, 1.0, 256)[:, None]  # (256, 1)
    centres = np.array([[0.75, 0.5, 0.25]])  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)  # (256, 3)
    return np.rint(rgb * 255.0).astype(np.uint8)


JET = jet_lut()


def levels(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map in [0, 1] (h, w) stretched bilinearly to `size` (width, height) -> uint8 levels.

    The model saw the image squashed to a square, so the square map is stretched back over
    the whole image (not cropped): each map cell covers the pixels it was computed from."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D map, got shape {cam.shape}")
    resized = Image.fromarray(np.clip(cam, 0.0, 1.0), mode="F").resize(
        size, Image.Resampling.BILINEAR
    )
    return np.rint(np.clip(np.asarray(resized), 0.0, 1.0) * 255.0).astype(np.uint8)


def heat_layer(cam: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The RGBA colour layer of `cam` at `size`: jet colour, alpha = the map's level (0 where
    the map is 0, opaque at its peak)."""
    level = levels(cam, size)  # (h, w)
    rgba = np.concatenate([JET[level], level[..., None]], axis=-1)  # (h, w, 4)
    return Image.fromarray(rgba, mode="RGBA")


def composite(image: Image.Image, layer: Image.Image, *, opacity: float = 0.6) -> Image.Image:
    """`layer` (RGBA, or an older RGB overlay) over the grayscale `image`, scaled to the
    layer's size, its alpha times `opacity`; RGB."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within [0, 1], got {opacity}")
    if layer.mode != "RGBA":  # an overlay drawn before layers existed: already blended
        return layer.convert("RGB")
    gray = image.convert("L").resize(layer.size, Image.Resampling.LANCZOS)
    base = np.asarray(gray.convert("RGB"), dtype=np.float32)  # (h, w, 3)
    rgba = np.asarray(layer, dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0 * opacity  # (h, w, 1)
    mixed = (1.0 - alpha) * base + alpha * rgba[..., :3]
    return Image.fromarray(np.rint(mixed).astype(np.uint8), mode="RGB")


def relative_luminance(rgb) -> float:
    """WCAG 2.1 relative luminance of an sRGB colour (0-255 channels)."""

    def channel(c: float) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(float(c)) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a, b) -> float:
    """WCAG contrast ratio of two colours, from 1 (none) to 21 (black on white)."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def contrast_table(levels_shown=(0, 32, 96, 128, 160, 224, 255)) -> str:
    """The colour scale's stops against black, mid-grey and white film (README "Viewer")."""
    rows = [
        "| map level | colour (RGB) | vs black | vs mid-grey (128) | vs white |",
        "|---|---|---|---|---|",
    ]
    for v in levels_shown:
        colour = tuple(int(c) for c in JET[v])
        ratios = [contrast_ratio(colour, (g, g, g)) for g in (0, 128, 255)]
        rows.append(
            f"| {v / 255:.2f} | {colour} | " + " | ".join(f"{r:.2f}:1" for r in ratios) + " |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(contrast_table())

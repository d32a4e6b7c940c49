"""PIL's bilinear resize as matrices, so an exported graph can shrink its input the way scireid's own
preprocessing does.

Pillow's ``Image.resize(BILINEAR)`` is separable and, when shrinking, widens its triangle filter by
the scale factor (antialiasing); OpenCV's ``INTER_LINEAR`` does not, so a tracker that resizes crops
with OpenCV straight to 64x32 sees aliased pixels our model never saw. A graph that takes a larger
input and applies ``A_h @ x @ A_w^T`` with PIL's own coefficients gives the model what PIL would
have given it (up to PIL's 8-bit rounding between its two passes).
"""
from __future__ import annotations

import numpy as np


def pil_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of Pillow's bilinear resample (``precompute_coeffs`` in Resample.c)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    m = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as Python's int()
        xmax = min(int(center + support + 0.5), in_size)
        w = np.array([max(0.0, 1.0 - abs((x - center + 0.5) / filterscale)) for x in range(xmin, xmax)])
        if w.sum() > 0:
            m[xx, xmin:xmax] = w / w.sum()
    return m


def pil_resize_float(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) float image resized with the matrices above (no 8-bit rounding)."""
    ah = pil_bilinear_matrix(img.shape[0], height)
    aw = pil_bilinear_matrix(img.shape[1], width)
    return np.einsum("oh,hwc,pw->opc", ah, img.astype(np.float64), aw)


__all__ = ["pil_bilinear_matrix", "pil_resize_float"]

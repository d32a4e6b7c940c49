"""Resizes as matrices, so an exported graph can turn what a tracker feeds it into what scireid's own
preprocessing would have given the model.

Pillow's ``Image.resize(BILINEAR)`` (scireid's preprocessing) is separable and, when shrinking, widens its
triangle filter by the scale factor (antialiasing). OpenCV's ``INTER_LINEAR`` (BoxMOT's) takes two taps at
each mapped position and never widens, so a crop resized straight to 64x32 with OpenCV holds aliased pixels
the model never saw. A graph that takes a larger input H x W can shrink it inside, ``A_h @ x @ A_w^T``:

- ``pil``: PIL's own weights for H -> h. Exact when the consumer hands over the crop itself at H x W, but a
  crop of another size reaches the graph through OpenCV first (an upsample, i.e. linear interpolation, or an
  aliased shrink), and PIL's shrink of that is not PIL's shrink of the crop.
- ``opencv``: weights fitted so that OpenCV INTER_LINEAR to H x W followed by them comes as close as one fixed
  matrix can to PIL's direct shrink, for every crop size from 64 px to H (least squares, each size weighted
  equally, over images with exponentially decaying pixel correlation, one output pixel long). Measured on the
  demo's model in BENCHMARKS.md ("scireid inside BoxMOT").
"""
from __future__ import annotations

import math

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


def opencv_linear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of OpenCV's ``resize(INTER_LINEAR)`` (``resize.cpp``): half-pixel mapping,
    two taps, edge clamped, no antialiasing."""
    scale = 1.0 / (out_size / in_size)  # OpenCV computes scale_x = 1 / inv_scale_x
    m = np.zeros((out_size, in_size), np.float64)
    for dx in range(out_size):
        fx = float(np.float32((dx + 0.5) * scale - 0.5))
        sx = math.floor(fx)
        fx -= sx
        if sx < 0:
            fx, sx = 0.0, 0
        if sx >= in_size - 1:
            fx, sx = 0.0, in_size - 1
        m[dx, sx] += 1.0 - fx
        if fx:
            m[dx, sx + 1] += fx
    return m


def _exp_correlation(n: int, length: float) -> np.ndarray:
    i = np.arange(n)
    return np.exp(-np.abs(i[:, None] - i[None]) / length)


def fitted_shrink_matrix(in_size: int, out_size: int, crop_sizes: list[int], corr_out_px: float = 1.0,
                         ridge: float = 1e-6) -> np.ndarray:
    """(out_size, in_size) G minimising sum over crop sizes s of E||G C_s x - P_s x||^2 / E||P_s x||^2, with C_s
    OpenCV's s -> in_size, P_s PIL's s -> out_size, and x correlated as exp(-|i-j| / (corr_out_px * s / out_size)).
    """
    a = np.zeros((in_size, in_size))
    b = np.zeros((out_size, in_size))
    for s in crop_sizes:
        c, p = opencv_linear_matrix(s, in_size), pil_bilinear_matrix(s, out_size)
        cov = _exp_correlation(s, corr_out_px * s / out_size)
        w = 1.0 / np.trace(p @ cov @ p.T)
        a += w * c @ cov @ c.T
        b += w * p @ cov @ c.T
    a += ridge * np.trace(a) / in_size * np.eye(in_size)
    return np.linalg.solve(a, b.T).T


def crop_sizes(in_size: int, step: int = 8, smallest: int = 64) -> list[int]:
    """The crop sizes an ``opencv`` graph is fitted for along an axis of ``in_size`` pixels: ``smallest``..in_size."""
    lo = min(smallest, in_size)
    return list(range(lo, in_size + 1, step)) + ([in_size] if (in_size - lo) % step else [])


def inside_resize(kind: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The graph's (A_h, A_w) for ``kind`` ``pil`` or ``opencv`` (see the module docstring)."""
    if kind == "pil":
        return pil_bilinear_matrix(in_hw[0], out_hw[0]), pil_bilinear_matrix(in_hw[1], out_hw[1])
    if kind != "opencv":
        raise ValueError(f"inside resize {kind!r}: expected pil or opencv")
    heights = crop_sizes(in_hw[0])
    widths = sorted({max(1, round(h * in_hw[1] / in_hw[0])) for h in heights})  # crops shaped like the input
    return (fitted_shrink_matrix(in_hw[0], out_hw[0], heights),
            fitted_shrink_matrix(in_hw[1], out_hw[1], widths))


def pil_resize_float(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) float image resized with PIL's matrices (no 8-bit rounding)."""
    ah = pil_bilinear_matrix(img.shape[0], height)
    aw = pil_bilinear_matrix(img.shape[1], width)
    return np.einsum("oh,hwc,pw->opc", ah, img.astype(np.float64), aw, optimize=True)


__all__ = ["crop_sizes", "fitted_shrink_matrix", "inside_resize", "opencv_linear_matrix", "pil_bilinear_matrix",
           "pil_resize_float"]

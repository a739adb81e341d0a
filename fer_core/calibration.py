"""Probability calibration: temperature scaling and expected calibration error (ECE).

Notation: N faces, K classes; ``logits`` (N, K), ``labels`` (N,) class indices.
Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
divides the logits by one scalar T > 0 fitted by minimising the negative log-likelihood
on held-out faces; it changes confidences, never the predicted class.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fit_temperature", "expected_calibration_error", "softmax"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``; returns a new (N, K) float32 array."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` on ``labels``.

    The NLL is convex in b = 1 / T (a log-sum-exp of linear functions of b, minus one): its
    derivative ``mean(E_p[z] - z_y)`` grows with b, and Newton steps on it, kept inside a
    bracket that halves where a step would leave it, find its zero to float64 precision.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"logits must be (N, K) with N = len(labels) > 0, got {z.shape} and {len(y)} labels")
    given = z[np.arange(len(y)), y.astype(np.int64)]

    def slope_and_curvature(b: float) -> tuple[float, float]:
        scaled = b * z
        p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mean = (p * z).sum(axis=1)
        return float(np.mean(mean - given)), float(np.mean((p * z * z).sum(axis=1) - mean**2))

    low, high = 0.0, 1.0
    while slope_and_curvature(high)[0] < 0 and high < 1e6:  # the zero lies beyond: widen the bracket
        low, high = high, high * 2
    b = (low + high) / 2
    for _ in range(max_iter):
        slope, curvature = slope_and_curvature(b)
        if slope > 0:
            high = b
        else:
            low = b
        step = b - slope / curvature if curvature > 0 else math.nan
        b_next = step if low < step < high else (low + high) / 2
        if abs(b_next - b) <= 1e-12 * max(b, 1e-12):
            b = b_next
            break
        b = b_next
    return float(1.0 / max(b, 1e-12))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE: the confidence-weighted gap between accuracy and confidence over equal-width bins.

    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` with the top-1 confidence
    binned into ``n_bins`` intervals of (0, 1].
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    filled = counts > 0
    return float(np.sum(np.abs(acc[filled] - conf[filled])) / len(labels))

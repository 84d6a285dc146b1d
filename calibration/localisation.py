"""Pixel-level metrics of anomaly maps against ground-truth defect masks.

- `pixel_auroc`: AUROC over every pixel of the given images, damaged pixels the positives.
- `pro_auc`: the area under the per-region-overlap curve up to a false positive rate
  (MVTec AD, Bergmann et al. 2021): at each threshold, PRO is the mean over connected
  ground-truth regions of the share of the region flagged, and the FPR is the share of
  defect-free pixels flagged; the area up to `fpr_limit` (0.3) is divided by the limit, so
  a perfect map scores 1 and a constant one 0.15.
A region counts the same whatever its size, so a map that finds small defects is credited
for them, which pixel AUROC (dominated by large regions) hides.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from calibration.metrics import auc


def _check(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
    if len(maps) != len(masks) or not maps:
        raise ValueError(f"need as many maps as masks (>0), got {len(maps)} and {len(masks)}")
    for m, g in zip(maps, masks):
        if m.shape != g.shape or m.ndim != 2:
            raise ValueError(f"a map {m.shape} and its mask {g.shape} must be the same (H, W)")


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """AUROC of the map values, damaged pixels against defect-free ones, over all images."""
    _check(maps, masks)
    v = np.concatenate([np.asarray(m, np.float64).ravel() for m in maps])
    g = np.concatenate([np.asarray(k, bool).ravel() for k in masks])
    if g.all() or not g.any():
        raise ValueError("pixel AUROC needs damaged and defect-free pixels")
    return auc(v[~g], v[g])


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray],
              n_thresholds: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at thresholds from above the largest map value down to below the smallest."""
    _check(maps, masks)
    maps = [np.asarray(m, np.float64) for m in maps]
    regions: list[tuple[int, np.ndarray]] = []  # (image index, flat indices of one region)
    for i, g in enumerate(masks):
        n, labels = cv2.connectedComponents(np.asarray(g, np.uint8), connectivity=8)
        flat = labels.ravel()
        regions += [(i, np.flatnonzero(flat == k)) for k in range(1, n)]
    if not regions:
        raise ValueError("PRO needs at least one damaged region")
    normal = np.concatenate([m.ravel()[~np.asarray(g, bool).ravel()] for m, g in zip(maps, masks)])
    if normal.size == 0:
        raise ValueError("PRO needs defect-free pixels")
    values = np.concatenate([m.ravel() for m in maps])
    qs = np.unique(np.quantile(values, np.linspace(0, 1, n_thresholds)))
    thresholds = np.concatenate([[np.inf], qs[::-1], [-np.inf]])
    normal_sorted = np.sort(normal)
    fpr = 1.0 - np.searchsorted(normal_sorted, thresholds, side="right") / normal.size
    region_vals = [np.sort(maps[i].ravel()[idx]) for i, idx in regions]
    pro = np.mean([1.0 - np.searchsorted(rv, thresholds, side="right") / rv.size for rv in region_vals], axis=0)
    return fpr, pro


def pro_auc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit]."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    order = np.lexsort((pro, fpr))
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= fpr_limit
    f, p = fpr[keep], pro[keep]
    if f[-1] < fpr_limit:  # close the curve at the limit, interpolating to the next point
        j = np.searchsorted(fpr, fpr_limit)
        f1, p1 = fpr[j], pro[j]
        p_lim = p[-1] + (p1 - p[-1]) * (fpr_limit - f[-1]) / max(f1 - f[-1], 1e-12)
        f, p = np.append(f, fpr_limit), np.append(p, p_lim)
    return float(np.trapezoid(p, f) / fpr_limit)

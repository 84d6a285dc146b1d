"""Damage evaluation (`adgan evaluate --damage ROOT`): a bundle of class C scores the intact
samples ROOT/C/ and their damaged twins ROOT/C_<defect>/ (from `adgan dataset damage`).

Per defect type and over all of them: image AUROC (damaged against intact), and of the
anomaly maps |G(z*) - x| (the agent's own `heat`) against the ground-truth masks, pixel
AUROC and PRO up to 30% FPR. Figures: the maps over the best and the worst damaged parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agent.decide.anomaly_map import heat
from agent.segment.preprocess import reframe, sample_to_input, uncrop_map
from agent.sources.dataset import check_preprocessing, frame_numbers, read_mask, read_sample
from calibration.localisation import pixel_auroc, pro_auc
from calibration.metrics import auc


@dataclass
class Scored:
    folder: Path
    frame: int
    score: float
    heat: np.ndarray            # (H, W) at the sample's size, in [0, 1]
    mask: np.ndarray | None     # ground truth (damaged samples only)


def damage_folders(root: Path, cls: str) -> dict[str, Path]:
    """{defect: folder} of the damaged samples of class `cls` under `root`: every `cls`_<defect>/
    folder that holds samples (rgb/), with ground-truth masks (mask/) or without."""
    return {p.name[len(cls) + 1:]: p for p in sorted(root.glob(f"{cls}_*")) if (p / "rgb").is_dir()}


def _mask(folder: Path, n: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """Sample n's mask (None where the folder has no mask/ at all), checked against its size."""
    if not (folder / "mask").is_dir():
        return None
    m = read_mask(folder, n)
    if m.shape != shape:
        raise ValueError(f"{folder / 'mask' / f'{n}.png'}: a mask of {m.shape[1]}x{m.shape[0]} for a sample of "
                         f"{shape[1]}x{shape[0]}; masks must be the size of their samples")
    return m


def score_damage(scorer, bundle, root: Path, frames=None, progress: bool = True) -> dict[str, list[Scored]]:
    """{'intact': [...], defect: [...]} for the bundle's class."""
    root = Path(root)
    folders = {"intact": root / bundle.cls, **damage_folders(root, bundle.cls)}
    if not folders["intact"].is_dir() or len(folders) < 2:
        raise ValueError(f"{root}: needs {bundle.cls}/ (intact) and {bundle.cls}_<defect>/ folders of samples, "
                         "with masks for the pixel metrics (make them with 'adgan dataset damage')")
    jobs = []
    for name, folder in folders.items():
        rec = check_preprocessing(folder, bundle.preprocessing)
        jobs += [(name, folder, n, rec) for n in frame_numbers(folder, frames)]
    out: dict[str, list[Scored]] = {name: [] for name in folders}
    for name, folder, n, rec in tqdm(jobs, desc=f"damage {bundle.cls}", unit="sample", disable=not progress):
        stored = read_sample(folder, n)
        s = reframe(stored, rec, bundle.preprocessing)
        x = sample_to_input(s, bundle.size)
        r = scorer.score(x)
        h = heat(x, r.reconstruction, r.relief_heat, bundle.heat_sigma, bundle.heat_background)
        if "reframe" in s.meta:  # a crop-to-part model: its map goes back where the part is
            h = uncrop_map(h, s.meta["reframe"], stored.depth.shape)
        elif h.shape != stored.depth.shape:
            h = cv2.resize(h, stored.depth.shape[::-1], interpolation=cv2.INTER_LINEAR)
        mask = None if name == "intact" else _mask(folder, n, stored.depth.shape)
        out[name].append(Scored(folder, n, float(r.score), h, mask))
    return out


def damage_rows(cls: str, kind: str, scored: dict[str, list[Scored]]) -> list[dict]:
    """One row per defect type and one over all of them. Pixel AUROC and PRO are over the damaged
    samples that have a mask with damage in it (n_masked of n_damaged); empty where none has."""
    intact = np.array([s.score for s in scored["intact"]])
    defects = [d for d in scored if d != "intact"]
    rows = []
    for name, group in [(d, scored[d]) for d in defects] + [("all", [s for d in defects for s in scored[d]])]:
        with_damage = [s for s in group if s.mask is not None and s.mask.any()]
        row = {"class": cls, "kind": kind, "defect": name, "n_intact": len(intact), "n_damaged": len(group),
               "image_auroc": auc(intact, [s.score for s in group]),
               "median_score_ratio": float(np.median([s.score for s in group]) / max(np.median(intact), 1e-12)),
               "n_masked": len(with_damage), "pixel_auroc": "", "pro_0.3": ""}
        if with_damage:
            maps, masks = [s.heat for s in with_damage], [s.mask for s in with_damage]
            row["pixel_auroc"] = pixel_auroc(maps, masks)
            row["pro_0.3"] = pro_auc(maps, masks)
        rows.append(row)
    return rows


def _overlay(s: Scored) -> np.ndarray:
    """The part (RGB) with the ground truth outlined, beside its anomaly map."""
    sample = read_sample(s.folder, s.frame)
    rgb = sample.rgb.copy()
    if s.mask is not None:
        contours, _ = cv2.findContours(s.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, (0, 255, 0), 1)
    hm = cv2.applyColorMap(np.rint(np.clip(s.heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[:, :, ::-1]
    return np.hstack([rgb, np.zeros((rgb.shape[0], 1, 3), np.uint8), hm])


def damage_figure(scored: dict[str, list[Scored]], n: int, path: Path, title: str) -> None:
    """Per defect: the n best-detected (highest score) and the n worst (lowest) damaged parts,
    each as the part with its ground truth outlined (green) and the anomaly map."""
    from agent.visual import label, write_png

    lines = []
    for d in [k for k in scored if k != "intact"]:
        ranked = sorted(scored[d], key=lambda s: -s.score)
        for tag, pick in (("best", ranked[:n]), ("worst", ranked[::-1][:n])):
            tiles = [_overlay(s) for s in pick]
            if not tiles:
                continue
            row = np.hstack([np.pad(t, ((0, 2), (0, 4), (0, 0))) for t in tiles])
            lines.append(label(cv2.resize(row, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST),
                               f"{d}, {tag} detected: " + ", ".join(f"{s.score:.3g}" for s in pick), scale=0.5))
    w = max(x.shape[1] for x in lines)
    img = np.vstack([np.pad(x, ((0, 4), (0, w - x.shape[1]), (0, 0))) for x in lines])
    write_png(path, label(img, f"{title}: damaged parts (ground truth in green) and |G(z*) - x|", scale=0.6))

"""Synthetic samples in the paper's layout: parts rendered by the station simulator, segmented
and framed like a station does (`adgan dataset synth`), and intact parts with their twins
carrying the renderer's own defects and exact masks (`adgan dataset synth-damage`), and raw
captures of a synthetic station with its empty-table frames (`adgan dataset synth-raw`)."""
from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from agent import durable
from agent.frame import NoObjectError, Sample
from agent.segment.preprocess import Preprocessing, make_sample
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig, Segmenter
from agent.sources.dataset import write_preprocessing, write_raw_frame, write_sample
from agent.sources.synthetic import CLASSES, DEFECTS, SyntheticSource, SyntheticStation

log = logging.getLogger(__name__)

REFERENCE_FRAMES = 15
SYNTH_RECORD, SYNTH_RAW_RECORD = "synth.json", "synth-raw.json"  # how `synth` / `synth-raw` made a folder

# -- synth -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthJob:
    split: str
    cls: str
    defect: str | None
    index: int


class _SynthWorker:
    """Per-process state: the station, its reference and the recipe."""

    station: SyntheticStation
    segmenter: Segmenter

    @classmethod
    def init(cls, seed: int, width: int, height: int, prep: Preprocessing, variety: str = "family") -> None:
        cls.seed, cls.prep = seed, prep
        cls.station = SyntheticStation(width, height, seed, variety)
        src = SyntheticSource(seed=seed, station=cls.station)
        ref = SurfaceReference.from_frames(src.empty_frames(REFERENCE_FRAMES))
        cls.segmenter = Segmenter(SegmentationConfig(), ref)

    @classmethod
    def init_forked(cls, *args) -> None:
        """`init` in a pool's worker. A forked worker inherits the parent's signal handlers: where
        the parent had its own for SIGTERM (an agent run in the same process: its stop request), the
        pool's terminate() at the end of `with Pool` did not end the worker, and the parent waited
        for it for ever (the demo's test hung so in CI on 2026-12-06). The worker dies on SIGTERM
        and SIGHUP, and leaves SIGINT (Ctrl-C) to the parent, which ends the pool."""
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cls.init(*args)

    @classmethod
    def run(cls, job: SynthJob) -> tuple[SynthJob, Sample]:
        split_id = {"train": 0, "test": 1}[job.split]
        # A part that segments to nothing (it can happen for tiny, dark parts) is re-drawn.
        for attempt in range(20):
            rng = np.random.default_rng([cls.seed, 3, split_id, CLASSES.index(job.cls),
                                         DEFECTS.index(job.defect) + 1 if job.defect else 0, job.index, attempt])
            frame = cls.station.render(rng, cls.station.random_part(rng, job.cls), job.defect)
            try:
                sample = make_sample(frame, cls.segmenter(frame), cls.prep)
            except NoObjectError:
                continue
            return job, Sample(sample.rgb, sample.depth, {**frame.meta, "attempt": attempt})
        raise RuntimeError(f"could not render a visible {job.cls} for {job}")


def synth_dataset(out: Path, classes: Sequence[str], n_train: int, n_test: int, seed: int,
                  prep: Preprocessing, defects: Sequence[str] = (), n_defect: int | None = None,
                  width: int = 640, height: int = 480, workers: int | None = None,
                  progress: bool = True, variety: str = "family", force: bool = False) -> dict[str, int]:
    """Write train/<class>/ and test/<class>/ (and test/<class>_defect/) in the paper's layout,
    and synth.json (how). `out` is written whole (durable.written_whole): one that is not empty is
    refused, and `force` replaces one this function made."""
    if n_train < 0 or n_test < 0:
        raise ValueError("sample counts must be >= 0")
    n_defect = n_test if n_defect is None else n_defect
    with durable.written_whole(out, force, SYNTH_RECORD, "'adgan dataset synth'",
                               " (a second run would leave the first one's other samples and folders beside its "
                               "own, under its labels.csv and recipe)",
                               makes=durable.named(SYNTH_RECORD, "train", "test")) as tmp:
        counts = _synth(tmp, classes, n_train, n_test, seed, prep, defects, n_defect, width, height, workers,
                        progress, variety)
        (tmp / SYNTH_RECORD).write_text(json.dumps(
            {"made_by": "adgan dataset synth", "seed": seed, "classes": list(classes), "train": n_train,
             "test": n_test, "defects": list(defects), "defect_test": n_defect, "variety": variety,
             "camera": [width, height], "preprocessing": prep.to_dict()}, indent=1) + "\n")
    return counts


def _synth(out: Path, classes: Sequence[str], n_train: int, n_test: int, seed: int, prep: Preprocessing,
           defects: Sequence[str], n_defect: int, width: int, height: int, workers: int | None, progress: bool,
           variety: str) -> dict[str, int]:
    jobs = [SynthJob("train", c, None, i) for c in classes for i in range(n_train)]
    jobs += [SynthJob("test", c, None, i) for c in classes for i in range(n_test)]
    if defects:
        jobs += [SynthJob("test", c, defects[i % len(defects)], i) for c in classes for i in range(n_defect)]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    labels: dict[str, list[list]] = {"train": [], "test": []}
    counts: dict[str, int] = {}
    init = (seed, width, height, prep, variety)
    bar = tqdm(total=len(jobs), desc="synth", unit="sample", disable=not progress)
    if workers > 1 and len(jobs) > 50:
        ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
        with ctx.Pool(workers, initializer=_SynthWorker.init_forked, initargs=init) as pool:
            results = pool.imap(_SynthWorker.run, jobs, chunksize=16)
            _write_results(out, results, labels, counts, bar)
    else:
        _SynthWorker.init(*init)
        _write_results(out, map(_SynthWorker.run, jobs), labels, counts, bar)
    bar.close()
    for key in counts:
        write_preprocessing(out / key, prep)
    for split, rows in labels.items():
        if rows:
            with open(out / split / "labels.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["folder", "frame", "class", "defect", "anomalous_for_class"])
                w.writerows(rows)
    return counts


def _write_results(out, results, labels, counts, bar) -> None:
    for job, sample in results:
        folder = job.cls if job.defect is None else f"{job.cls}_defect"
        write_sample(out / job.split / folder, job.index, sample)
        labels[job.split].append([folder, job.index, job.cls, job.defect or "", int(job.defect is not None)])
        key = f"{job.split}/{folder}"
        counts[key] = counts.get(key, 0) + 1
        bar.update()


@dataclass(frozen=True)
class TwinJob:
    cls: str
    index: int
    defects: tuple[str, ...]


def _mask_to_sample(mask: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    """A camera-frame mask as the sample cut from window `crop` sees it (True where damaged)."""
    from agent.segment.preprocess import _crop
    m = cv2.resize(_crop(mask.astype(np.float32), *crop), (size, size), interpolation=cv2.INTER_AREA)
    return m >= 0.25  # a sample pixel a quarter covered by the defect counts as damaged


def _render_twins(job: TwinJob) -> tuple[TwinJob, Sample | None, dict]:
    """The intact part and, for each defect, the same scene with it (same pose, light and
    sensor noise): the camera pixels where the frames differ are the defect's mask."""
    w = _SynthWorker
    for attempt in range(20):
        seq = [w.seed, 4, CLASSES.index(job.cls), job.index, attempt]
        part_rng = np.random.default_rng(seq)
        part = w.station.random_part(part_rng, job.cls)
        intact = w.station.render(np.random.default_rng(seq + [1]), part, None)
        try:
            s_intact = make_sample(intact, w.segmenter(intact), w.prep)
        except NoObjectError:
            continue
        twins = {}
        for d in job.defects:
            f = w.station.render(np.random.default_rng(seq + [1]), part, d)
            # changed: depth by more than 2 mm (or gained / lost), or colour by more than 8 levels
            dz = np.abs(f.depth.astype(np.int32) - intact.depth.astype(np.int32))
            dc = np.abs(f.rgb.astype(np.int16) - intact.rgb.astype(np.int16)).max(axis=-1)
            diff = (dz > 2) | ((f.depth == 0) != (intact.depth == 0)) | (dc > 8)
            try:
                s = make_sample(f, w.segmenter(f), w.prep)
            except NoObjectError:
                continue
            # on the part as either sample shows it (a chunk's removed pixels count)
            mask = _mask_to_sample(diff, s.meta["crop"], w.prep.size) & ((s.depth > 0) | (s_intact.depth > 0))
            same_window = s.meta["crop"] == s_intact.meta["crop"]
            changed = not same_window or not (np.array_equal(s.rgb, s_intact.rgb)
                                              and np.array_equal(s.depth, s_intact.depth))
            if mask.any() and changed:  # a defect the sample does not show (hidden, too faint) makes no twin
                twins[d] = (s, mask)
        return job, s_intact, twins
    return job, None, {}


def synth_damage_dataset(out: Path, classes: Sequence[str], n: int, seed: int, prep: Preprocessing,
                         defects: Sequence[str] = DEFECTS, width: int = 640, height: int = 480,
                         workers: int | None = None, progress: bool = True, variety: str = "family",
                         force: bool = False) -> dict[str, int]:
    """The renderer's own defects with their masks, in `adgan dataset damage`'s layout:
    out/<class>/N (intact) and out/<class>_<defect>/N with mask/N.png (its twin with the
    defect), rendered at camera resolution and framed with `prep` like a station does, and
    out/damage.json (how). `out` is written whole, as `adgan dataset damage` writes its own
    (calibration.damage.damage_set: one that is not empty is refused; `force` replaces a damage set)."""
    from calibration.damage import damage_set
    if n < 1:
        raise ValueError("need at least one part per class")
    with damage_set(Path(out), force) as tmp:
        counts = _synth_twins(tmp, classes, n, seed, prep, defects, width, height, workers, progress, variety)
        (tmp / "damage.json").write_text(json.dumps(
            {"made_by": "adgan dataset synth-damage", "seed": seed, "classes": list(classes), "parts": n,
             "defects": list(defects), "variety": variety, "camera": [width, height]}, indent=1) + "\n")
    return counts


def _synth_twins(out: Path, classes: Sequence[str], n: int, seed: int, prep: Preprocessing, defects: Sequence[str],
                 width: int, height: int, workers: int | None, progress: bool, variety: str) -> dict[str, int]:
    from agent.sources.dataset import write_mask
    jobs = [TwinJob(c, i, tuple(defects)) for c in classes for i in range(n)]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    init = (seed, width, height, prep, variety)
    counts: dict[str, int] = {}
    bar = tqdm(total=len(jobs), desc="synth-damage", unit="part", disable=not progress)
    if workers > 1 and len(jobs) > 8:
        ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
        pool = ctx.Pool(workers, initializer=_SynthWorker.init_forked, initargs=init)
        results = pool.imap(_render_twins, jobs, chunksize=4)
    else:
        pool = None
        _SynthWorker.init(*init)
        results = map(_render_twins, jobs)
    try:
        for job, intact, twins in results:
            bar.update()
            if intact is None:
                log.warning("%s %d: no visible part in 20 tries, skipped", job.cls, job.index)
                continue
            write_sample(out / job.cls, job.index, intact)
            counts[job.cls] = counts.get(job.cls, 0) + 1
            for d, (s, mask) in twins.items():
                folder = out / f"{job.cls}_{d}"
                write_sample(folder, job.index, s)
                write_mask(folder, job.index, mask)
                counts[folder.name] = counts.get(folder.name, 0) + 1
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        bar.close()
    for key in counts:
        write_preprocessing(out / key, prep)
    return counts


# -- synth-raw ---------------------------------------------------------------------------
def synth_raw(out: Path, count: int, n_empty: int, seed: int, classes: Sequence[str] = CLASSES,
              defects: Sequence[str] = (), defect_rate: float = 0.0, width: int = 640,
              height: int = 480, progress: bool = True, variety: str = "family",
              force: bool = False) -> SurfaceReference:
    """Raw-layout captures of a synthetic station: frames/, empty/ and reference.npz, and
    synth-raw.json (how). `out` is written whole, as `synth_dataset` writes its own."""
    if count < 0 or n_empty < 1:
        raise ValueError(f"--count must be >= 0 and --empty >= 1 (the reference needs an empty frame), "
                         f"got {count} and {n_empty}")
    if not 0 <= defect_rate <= 1:
        raise ValueError(f"--defect-rate must be in [0, 1], got {defect_rate}")
    with durable.written_whole(out, force, SYNTH_RAW_RECORD, "'adgan dataset synth-raw'",
                               " (a second run would leave the first one's other frames beside its own, under "
                               "its reference)",
                               makes=durable.named(SYNTH_RAW_RECORD, "frames", "empty", "reference.npz")) as tmp:
        ref = _synth_raw(tmp, count, n_empty, seed, classes, defects, defect_rate, width, height, progress, variety)
        (tmp / SYNTH_RAW_RECORD).write_text(json.dumps(
            {"made_by": "adgan dataset synth-raw", "seed": seed, "classes": list(classes), "count": count,
             "empty": n_empty, "defects": list(defects), "defect_rate": defect_rate, "variety": variety,
             "camera": [width, height]}, indent=1) + "\n")
    return ref


def _synth_raw(out: Path, count: int, n_empty: int, seed: int, classes: Sequence[str], defects: Sequence[str],
               defect_rate: float, width: int, height: int, progress: bool, variety: str) -> SurfaceReference:
    src = SyntheticSource(classes, seed=seed, count=count, width=width, height=height,
                          defects=defects, defect_rate=defect_rate, variety=variety)
    empties = list(src.empty_frames(n_empty))
    for j, f in enumerate(empties):
        write_raw_frame(out / "empty", j, f)
    for i, f in enumerate(tqdm(src, total=count, desc="synth-raw", unit="frame", disable=not progress)):
        write_raw_frame(out / "frames", i, f)
    ref = SurfaceReference.from_frames(empties)
    ref.save(out / "reference.npz")
    return ref

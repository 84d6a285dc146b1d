"""Scoring labelled sets through the agent's own search (or the autograd oracle, export/autograd.py): one
scorer per bundle and named backend, and the scores of every sample of a folder."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from agent.scoring.backend import backend_settings, open_backend
from agent.scoring.bundle import Bundle
from agent.scoring.search import Searcher
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import check_preprocessing, class_folders, frame_numbers, read_model_sample, rgb_path

SCORER_BACKENDS = ("onnxruntime", "tensorrt", "torch")


def engine_settings(backend: str, threads: int = 0, fp16: bool = False):
    """The agent's settings object of a named backend (None for the torch oracle)."""
    if backend == "torch":
        return None
    return backend_settings(backend, threads=threads, fp16=fp16)


def engine_id(backend: str, fp16: bool = False) -> str:
    """The engine a score comes from, as thresholds record it (agent settings' `engine`)."""
    s = engine_settings(backend, fp16=fp16)
    return "torch" if s is None else s.engine


def make_scorer(bundle: Bundle, backend: str, seed: int = 0, threads: int = 0, fp16: bool = False, **overrides):
    """An object with .score(x) -> ScoreResult for the named backend."""
    if backend == "torch":
        from export.autograd import AutogradSearcher
        return AutogradSearcher(bundle, seed, **overrides)
    settings = engine_settings(backend, threads, fp16)
    return Searcher(bundle, open_backend(bundle, settings), seed, **overrides)


def score_folder(scorer, bundle: Bundle, samples: str | Path, frames=None, progress: bool = True):
    """Yield (path, class, score) for every sample under a class folder or dataset root."""
    folders = class_folders(samples)
    todo = []
    for folder in folders:
        rec = check_preprocessing(folder, bundle.preprocessing)
        todo += [(folder, n, rec) for n in frame_numbers(folder, frames)]
    if not todo:
        raise ValueError(f"{samples}: no samples to score" + (f" in frames {frames[0]}:{frames[1]}" if frames else ""))
    parts = bundle.parts_per_call  # a bundle of several parts per call scores them together
    batch: list[tuple[str, str, object]] = []
    for i, (folder, n, rec) in enumerate(tqdm(todo, desc="score", unit="sample", disable=not progress)):
        x = sample_to_input(read_model_sample(folder, n, bundle.preprocessing, rec), bundle.size)
        batch.append((str(rgb_path(folder, n)), folder.name, x))
        if len(batch) == parts or i == len(todo) - 1:
            results = scorer.score_batch([b[2] for b in batch]) if parts > 1 else [scorer.score(batch[0][2])]
            for (path, cls, _), r in zip(batch, results):
                yield path, cls, r.score
            batch = []

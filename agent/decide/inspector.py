"""One model per class, each with the threshold calibrated on it: input in, verdict out.

Everything is checked when the agent starts, so a wrong file stops it with a clear
message instead of producing wrong verdicts: every bundle is verified (hashes), must be
of the class it is configured for, and must have a threshold calibrated on exactly that
bundle with the agent's latent seed. The search runs with the hyperparameters the
threshold was calibrated with (they are recorded beside it). Thresholds calibrated again
replace the ones in use without a restart (`with_thresholds`), under the same checks.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agent import durable
from agent.decide.class_check import RIVAL_K, CheckRecord, ClassCheck, by_searcher, refusal
from agent.decide.thresholds import ClassThreshold, ThresholdError, load_threshold, recorded_engine
from agent.scoring.bundle import Bundle, BundleError
from agent.scoring.backend import Backend, open_backend
from agent.scoring.search import Searcher
from agent.settings import SettingError

log = logging.getLogger(__name__)


@dataclass
class Decision:
    verdict: str            # "ok" or "anomaly"
    score: float
    threshold: float
    reconstruction: np.ndarray
    relief: np.ndarray | None = None  # the relief map (S, S) in the anomaly map's units, for bundles with a relief check
    relief_decides: bool = False      # the relief check, not the search, gave the score
    class_check: dict | None = None   # the class check's result (class_check.ClassCheck) where the class has one


@dataclass
class ClassModel:
    bundle: Bundle
    threshold: ClassThreshold
    searcher: Searcher
    backend_name: str
    check: ClassCheck | None = None  # against the station's other classes (with_checks)

    def ref(self) -> dict:
        return {"class": self.bundle.cls, "kind": self.bundle.kind, "bundle_hash": self.bundle.bundle_hash,
                "backend": self.backend_name}

    def decide(self, x: np.ndarray) -> Decision:
        r = self.searcher.score(x)
        if not math.isfinite(r.score):
            raise ValueError(f"the search produced a non-finite score ({r.score})")
        verdict = "anomaly" if self.threshold.is_anomaly(r.score) else "ok"
        check = self.check(x) if self.check is not None else None
        if check is not None and check["anomaly"]:
            verdict = "anomaly"  # another class's generator reproduces the part better: not this class's part
        return Decision(verdict, r.score, self.threshold.threshold, r.reconstruction, r.relief_heat, r.relief_decides,
                        check)

    def close(self) -> None:
        self.searcher.backend.close()


def check_class_model(cls: str, bundle_path: str | Path, thresholds: str | Path, seed: int,
                      backend_settings=None) -> tuple[Bundle, ClassThreshold]:
    """The verified bundle and its threshold, without opening an engine. Raises SettingError
    naming the setting at fault: a bundle that is missing, tampered with or of another class;
    thresholds that are missing or were calibrated on another bundle, latent seed or engine."""
    bundle = verified_bundle(f"model.bundles.{cls}", cls, bundle_path)
    return bundle, check_threshold(cls, bundle, thresholds, seed, backend_settings)


def verified_bundle(setting: str, cls: str, path: str | Path) -> Bundle:
    """The bundle at `path`, verified and of class `cls`; SettingError naming `setting` otherwise."""
    try:
        bundle = Bundle.load(path)
    except BundleError as e:
        raise SettingError(setting, f"{path}: {e}") from None
    except OSError as e:
        raise SettingError(setting, f"{path}: {durable.permission_words(e)}") from None
    if bundle.cls != cls:
        raise SettingError(setting, f"bundle {path} was trained on class {bundle.cls!r}, not {cls!r}")
    return bundle


def load_check_bundles(paths: dict[str, str | Path] | None) -> dict[str, Bundle]:
    """model.check_bundles: the verified bundles of the line's other products, read for their class
    PCAs only (no engine). SettingError naming the setting for one missing, tampered with or of
    another class."""
    return {cls: verified_bundle(f"model.check_bundles.{cls}", cls, path) for cls, path in (paths or {}).items()}


def check_threshold(cls: str, bundle: Bundle, thresholds: str | Path, seed: int,
                    backend_settings=None) -> ClassThreshold:
    """The threshold of `cls` in `thresholds`, refused (SettingError) unless it was calibrated on
    `bundle` with this latent seed and engine."""
    try:
        thr = load_threshold(thresholds, cls, bundle.bundle_hash)
    except (ThresholdError, OSError) as e:  # (an OSError stays the cause: a reload reads the file again)
        raise SettingError("model.thresholds", durable.permission_words(e) if isinstance(e, OSError) else str(e)) \
            from (e if isinstance(e, OSError) else None)
    rec_seed = thr.record.get("seed")
    if rec_seed is not None and (isinstance(rec_seed, bool) or not isinstance(rec_seed, int)):
        raise SettingError("model.thresholds", f"{thresholds}: class {cls!r}: the recorded latent seed must be a "
                                               f"whole number, got {rec_seed!r}")
    if rec_seed is not None and rec_seed != seed:
        raise SettingError("model.seed", f"{thresholds}: the threshold of {cls!r} was calibrated with latent seed "
                                         f"{rec_seed}, the agent uses seed {seed}; set model.seed = {rec_seed} "
                                         "or recalibrate")
    engine = getattr(backend_settings, "engine", "onnxruntime/CPUExecutionProvider")
    calibrated = recorded_engine(thr.record)
    if calibrated != engine:
        raise SettingError("model.backend", f"{thresholds}: the threshold of {cls!r} was calibrated on "
                                            f"{calibrated or 'an unrecorded engine'}, this agent runs {engine}; "
                                            "scores differ between engines, so recalibrate on this one "
                                            "('adgan calibrate --backend ...' on this device)")
    return thr


def _search_overrides(thr: ClassThreshold) -> dict:
    """The search hyperparameters the threshold was calibrated with (recorded beside it)."""
    search = thr.record.get("search") or {}
    if not isinstance(search, dict):
        raise ValueError(f"'search' must be an object, got {search!r}")
    return {k: search[k] for k in ("n_seed", "k", "lr_z", "lr_theta") if k in search}


def _searcher(thr: ClassThreshold, bundle: Bundle, engine: Backend, seed: int, thresholds: str | Path) -> Searcher:
    """The search the threshold was calibrated with, on `engine`; a record that cannot be used
    (written by hand: a k of -1, a count as text) is refused (SettingError), as a bad threshold is."""
    try:
        ov = _search_overrides(thr)
        kinds = {"n_seed": int, "k": int, "lr_z": (int, float), "lr_theta": (int, float)}
        bad = [k for k, v in ov.items() if isinstance(v, bool) or not isinstance(v, kinds[k])]
        if bad:
            raise ValueError(f"{', '.join(f'{k} {ov[k]!r}' for k in bad)}: not a number of the search's kind")
        return Searcher(bundle, engine, seed, **ov)
    except (TypeError, ValueError) as e:
        raise SettingError("model.thresholds", f"{thresholds}: the search recorded for {thr.cls!r} cannot be used "
                                               f"({e}); calibrate again") from None


def load_class_model(cls: str, bundle_path: str | Path, thresholds: str | Path, seed: int,
                     backend_settings=None, backend: Backend | None = None) -> ClassModel:
    bundle, thr = check_class_model(cls, bundle_path, thresholds, seed, backend_settings)
    engine = backend if backend is not None else open_backend(bundle, backend_settings)
    name = getattr(backend_settings, "type", "onnxruntime")
    try:
        searcher = _searcher(thr, bundle, engine, seed, thresholds)
    except BaseException:
        if backend is None:
            engine.close()
        raise
    log.info("class %s: %s on %s, threshold %.6g", cls, bundle.describe(), name, thr.threshold)
    return ClassModel(bundle, thr, searcher, name)


def with_thresholds(models: dict[str, ClassModel], thresholds: str | Path, seed: int,
                    backend_settings=None, check_bundles: dict | None = None) -> dict[str, ClassModel]:
    """The models with the thresholds now in `thresholds`, on the engines already open (a search
    recorded with other hyperparameters gets its own Searcher), and the class checks they record
    against the models and `check_bundles` (model.check_bundles, read again: load_check_bundles).
    Raises SettingError, leaving `models` as they are, when any class's threshold is refused."""
    out = {}
    for cls, m in models.items():
        thr = check_threshold(cls, m.bundle, thresholds, seed, backend_settings)
        try:
            same = _search_overrides(thr) == _search_overrides(m.threshold)
        except ValueError:
            same = False  # (refused just below, by _searcher)
        searcher = m.searcher if same else _searcher(thr, m.bundle, m.searcher.backend, seed, thresholds)
        out[cls] = ClassModel(m.bundle, thr, searcher, m.backend_name)
    return with_checks(out, thresholds, load_check_bundles(check_bundles))


def at_k0(searcher: Searcher) -> Searcher:
    """The searcher's own engine and encoder, scoring at the class check's k (the encoder's start)."""
    s = copy.copy(searcher)
    s.params = replace(searcher.params, k=RIVAL_K)
    return s


def check_rivals(cls: str, bundle: Bundle, thr: ClassThreshold, loaded: dict[str, Bundle],
                 thresholds: str | Path, engines: set[str] | None = None) -> CheckRecord | None:
    """The class check `thr`'s record holds (None: the class is not checked), refused (SettingError)
    where it cannot be made with the `loaded` bundles (model.bundles and model.check_bundles; of
    them, `engines` the classes with an engine, None: all): its rivals' bundles not loaded by this
    station, other bundles than those it was calibrated against, bundles framed otherwise, or a
    generators' check against a bundle without an engine."""
    try:
        rec = CheckRecord.read(thr.record)
    except ValueError as e:
        raise SettingError("model.thresholds", f"{thresholds}: class {cls!r}: {e}; calibrate again") from None
    if rec is None:
        return None
    for o, h in rec.rivals.items():
        setting = "bundles" if engines is None or o in engines or o not in loaded else "check_bundles"
        if o not in loaded:
            where = f"model.bundles.{o}" + (f" (or model.check_bundles.{o}: its class PCA only, no engine)"
                                            if rec.model == "pca" else "")
            raise SettingError(f"model.bundles.{o}",
                               f"{thresholds}: the class check of {cls!r} was calibrated against a bundle of "
                               f"{o!r}, which this station does not load: add {where} (the bundle "
                               f"{h[:12]}...), or calibrate {cls!r} without --class-check")
        if rec.model == "generator" and setting == "check_bundles":
            raise SettingError(f"model.check_bundles.{o}",
                               f"{thresholds}: the class check of {cls!r} compares the generators at k 0, which "
                               f"needs an engine for {o!r}: move it to model.bundles, or calibrate {cls!r} again "
                               "with bundles that carry class PCAs (--class-check-model pca)")
        if loaded[o].bundle_hash != h:
            raise SettingError(f"model.{setting}.{o}",
                               f"{thresholds}: the class check of {cls!r} was calibrated against bundle "
                               f"{h[:12]}... of {o!r}, this station loads {loaded[o].bundle_hash[:12]}...: "
                               f"calibrate {cls!r} again with --class-check {loaded[o].path}")
    why = refusal(bundle, {o: loaded[o] for o in rec.rivals}, rec.model)
    if why is not None:
        raise SettingError("model.thresholds", f"{thresholds}: the class check of {cls!r} cannot be made: {why}")
    return rec


def with_checks(models: dict[str, ClassModel], thresholds: str | Path,
                extra: dict[str, Bundle] | None = None) -> dict[str, ClassModel]:
    """The models, each with the class check its threshold record holds (check_rivals), on the
    engines already open, or against the class PCAs of `extra` (load_check_bundles)."""
    loaded = {**(extra or {}), **{c: m.bundle for c, m in models.items()}}
    out = {}
    for cls, m in models.items():
        rec = check_rivals(cls, m.bundle, m.threshold, loaded, thresholds, set(models))
        check = None
        if rec is not None and rec.model == "pca":
            check = ClassCheck(rec, m.bundle.class_pca.error, {o: loaded[o].class_pca.error for o in rec.rivals})
        elif rec is not None:
            check = ClassCheck(rec, by_searcher(at_k0(m.searcher)),
                               {o: by_searcher(at_k0(models[o].searcher)) for o in rec.rivals})
        out[cls] = replace(m, check=check)
    return out


def load_models(bundles: dict[str, Path], thresholds: Path, seed: int, backend_settings=None,
                check_bundles: dict[str, Path] | None = None) -> dict[str, ClassModel]:
    """Every configured class's model, with the class checks its thresholds record (against the
    models and `check_bundles`); closes what was opened if one of them is refused."""
    models: dict[str, ClassModel] = {}
    try:
        extra = load_check_bundles(check_bundles)  # (refused before any engine is opened)
        for cls, path in bundles.items():
            models[cls] = load_class_model(cls, path, thresholds, seed, backend_settings)
        return with_checks(models, thresholds, extra)
    except BaseException:
        for m in models.values():
            m.close()
        raise

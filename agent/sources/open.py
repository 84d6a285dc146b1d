"""The frame source that a station's `source` settings describe."""
from __future__ import annotations

from agent.sources.base import FrameSource


def open_source(cfg, frame_timeout_s: float = 5.0) -> FrameSource:
    """The frame source described by the `source` settings."""
    if cfg.type == "folder":
        from agent.sources.dataset import parse_frames
        from agent.sources.folder import FolderSource
        return FolderSource(cfg.path, parse_frames(cfg.frames), loop=cfg.loop)
    if cfg.type == "synthetic":
        from agent.sources.synthetic import SyntheticSource
        return SyntheticSource(cfg.classes, seed=cfg.seed, count=cfg.count, defects=cfg.defects,
                               defect_rate=cfg.defect_rate if cfg.defects else 0.0, empty_rate=cfg.empty_rate,
                               fps=cfg.fps or 30.0,
                               frames_per_part=cfg.frames_per_part, gap_frames=cfg.gap_frames, variety=cfg.variety)
    if cfg.type == "realsense":
        from agent.sources.realsense import RealSenseFrameSource
        return RealSenseFrameSource(cfg.serial, cfg.recording, cfg.width, cfg.height, cfg.fps, cfg.visual_preset,
                                    timeout_s=frame_timeout_s, real_time=cfg.real_time)
    raise ValueError(f"unknown source type {cfg.type!r}")

"""Intel RealSense frames through `rs.pipeline`: a live camera, or a `.bag` / `.db3` recording
played back through the same code. Depth is aligned to colour (`rs.align`) and converted to
millimetres with the device's depth scale.

pyrealsense2 is imported when a source is opened, so the rest of the agent runs without it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from agent.frame import FrameError, Intrinsics, RGBDFrame
from agent.sources.base import FrameSource, SourceError

log = logging.getLogger(__name__)


def _import_rs():
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise SourceError(f"pyrealsense2 is not installed ({e}); on a Jetson build it from librealsense "
                          "or install the 'realsense' extra") from None
    return rs


def depth_to_mm(raw: np.ndarray, depth_scale_m: float) -> np.ndarray:
    """Device depth units -> uint16 millimetres (0 stays 0, the camera's 'no measurement')."""
    if abs(depth_scale_m - 0.001) < 1e-9:
        return raw.astype(np.uint16, copy=True)
    mm = np.rint(raw.astype(np.float64) * (depth_scale_m * 1000.0))
    return np.clip(mm, 0, 65535).astype(np.uint16)


class RealSenseFrameSource(FrameSource):
    """Colour + aligned depth framesets as RGBDFrames.

    A recording ends the stream (read() returns None) when playback stops. Frames whose
    depth and colour timestamps differ by more than half a frame period are skipped, as
    are repeats of an already delivered depth frame, so each frame is one matched pair.
    """

    segmented = False

    def __init__(self, serial: str | None = None, recording: str | Path | None = None, width: int = 640,
                 height: int = 480, fps: int = 30, visual_preset: str | None = None, timeout_s: float = 5.0,
                 real_time: bool = True) -> None:
        rs = self._rs = _import_rs()
        self.recording = Path(recording) if recording else None
        self.live = self.recording is None
        self.timeout_ms = max(int(timeout_s * 1000), 1)
        self.fps = fps
        if self.recording is not None and not self.recording.is_file():
            raise FileNotFoundError(f"recording {self.recording} does not exist")
        cfg = rs.config()
        if self.recording is not None:
            cfg.enable_device_from_file(str(self.recording), repeat_playback=False)
        else:
            if serial:
                cfg.enable_device(serial)
            cfg.enable_stream(rs.stream.depth, width, height, rs.format.z16, fps)
            cfg.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
        self.pipeline = rs.pipeline()
        try:
            profile = self.pipeline.start(cfg)
        except RuntimeError as e:
            what = f"recording {self.recording}" if self.recording else f"camera {serial or '(first found)'}"
            raise SourceError(f"cannot start RealSense {what}: {e}") from None
        device = profile.get_device()
        self.playback = device.as_playback() if self.recording is not None else None
        if self.playback is not None:
            self.playback.set_real_time(real_time)
        depth_sensor = device.first_depth_sensor()
        self.depth_scale = float(depth_sensor.get_depth_scale())
        if visual_preset and self.playback is None:
            self._set_preset(depth_sensor, visual_preset)
        self.align = rs.align(rs.stream.color)
        color = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        self.intrinsics = Intrinsics(width=color.width, height=color.height, fx=color.fx, fy=color.fy,
                                     cx=color.ppx, cy=color.ppy)
        name = device.get_info(rs.camera_info.name) if device.supports(rs.camera_info.name) else "RealSense"
        self.describe = (f"{name} "
                         f"{'playback of ' + str(self.recording) if self.recording else 'live'}, "
                         f"{color.width}x{color.height}, depth scale {self.depth_scale:g} m")
        self._last_depth_no = None
        self._closed = False
        log.info("RealSense source: %s", self.describe)

    def _set_preset(self, sensor, name: str) -> None:
        rs = self._rs
        if not sensor.supports(rs.option.visual_preset):
            log.warning("this camera has no visual presets; '%s' ignored", name)
            return
        rng = sensor.get_option_range(rs.option.visual_preset)
        names = {}
        for v in range(int(rng.min), int(rng.max) + 1):
            names[sensor.get_option_value_description(rs.option.visual_preset, v)] = v
        if name not in names:
            raise SourceError(f"visual preset {name!r} is not one of: {', '.join(names)}")
        sensor.set_option(rs.option.visual_preset, names[name])

    def _ended(self) -> bool:
        return self.playback is not None and self.playback.current_status() == self._rs.playback_status.stopped

    def read(self) -> RGBDFrame | None:
        if self._closed:
            raise SourceError("read from a closed RealSense source")
        half_period_ms = 500.0 / max(self.fps, 1)
        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            ok, frames = self.pipeline.try_wait_for_frames(self.timeout_ms)
            if not ok:
                if self._ended():
                    return None
                raise SourceError(f"no frame from the RealSense within {self.timeout_ms / 1000:g} s")
            aligned = self.align.process(frames)
            depth, color = aligned.get_depth_frame(), aligned.get_color_frame()
            matched = (depth and color and abs(depth.get_timestamp() - color.get_timestamp()) <= half_period_ms
                       and depth.get_frame_number() != self._last_depth_no)
            if matched:
                break
            if time.monotonic() > deadline:
                raise SourceError("RealSense delivers no matched colour + depth pairs")
        self._last_depth_no = depth.get_frame_number()
        rgb = np.asanyarray(color.get_data())
        fmt = color.get_profile().format()
        if fmt == self._rs.format.bgr8:
            rgb = rgb[:, :, ::-1]
        elif fmt != self._rs.format.rgb8:
            raise FrameError(f"colour format {fmt} is not supported (use rgb8 or bgr8)")
        try:
            return RGBDFrame(rgb=np.ascontiguousarray(rgb), depth=depth_to_mm(np.asanyarray(depth.get_data()),
                                                                               self.depth_scale),
                             timestamp=time.time(), intrinsics=self.intrinsics,
                             meta={"frame": int(depth.get_frame_number()),
                                   "device_timestamp_ms": float(depth.get_timestamp())})
        except ValueError as e:
            raise FrameError(f"RealSense frame: {e}") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.pipeline.stop()
            except RuntimeError:
                pass

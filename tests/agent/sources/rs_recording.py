"""Make a real RealSense recording without a camera: a pyrealsense2 software device with a
depth and a colour sensor, recorded to .db3 by rs.recorder (librealsense 2.59 writes rosbag2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def record(path: Path, frames, fps: int = 30, depth_units: float = 0.001) -> None:
    """frames: [(rgb uint8 HxWx3, depth uint16 HxW in device units, Intrinsics)], one size."""
    import pyrealsense2 as rs

    rgb0, _, k = frames[0]
    h, w = rgb0.shape[:2]

    def intrinsics():
        i = rs.intrinsics()
        i.width, i.height, i.ppx, i.ppy, i.fx, i.fy = w, h, k.cx, k.cy, k.fx, k.fy
        i.model, i.coeffs = rs.distortion.none, [0.0] * 5
        return i

    def stream(kind, uid, bpp, fmt):
        s = rs.video_stream()
        s.type, s.index, s.uid, s.width, s.height, s.fps, s.bpp, s.fmt = kind, 0, uid, w, h, fps, bpp, fmt
        s.intrinsics = intrinsics()
        return s

    dev = rs.software_device()
    ds, cs = dev.add_sensor("Depth"), dev.add_sensor("Color")
    ds.add_read_only_option(rs.option.depth_units, depth_units)
    dp = ds.add_video_stream(stream(rs.stream.depth, 0, 2, rs.format.z16)).as_video_stream_profile()
    cp = cs.add_video_stream(stream(rs.stream.color, 1, 3, rs.format.rgb8)).as_video_stream_profile()
    ex = rs.extrinsics()
    ex.rotation, ex.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
    dp.register_extrinsics_to(cp, ex)
    dev.create_matcher(rs.matchers.dlr_c)
    rec = rs.recorder(str(path), dev)
    sync = rs.syncer()
    ds.open(dp)
    cs.open(cp)
    ds.start(sync)
    cs.start(sync)
    keep = []  # the SDK reads pixel buffers after on_video_frame returns
    for i, (rgb, depth, _) in enumerate(frames):
        for sensor, prof, px, bpp in ((ds, dp, np.ascontiguousarray(depth), 2), (cs, cp, np.ascontiguousarray(rgb), 3)):
            keep.append(px)
            f = rs.software_video_frame()
            f.pixels, f.bpp, f.stride = px, bpp, w * bpp
            f.timestamp, f.domain, f.frame_number, f.profile = i * 1000.0 / fps, rs.timestamp_domain.hardware_clock, i, prof
            sensor.set_metadata(rs.frame_metadata_value.actual_fps, fps)  # playback needs it to sync
            sensor.on_video_frame(f)
    for s in (ds, cs):
        s.stop()
        s.close()
    rec.pause()
    del rec

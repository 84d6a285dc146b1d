"""Vectorised ray casting of simple parts on a table, seen by one RGB-D camera.

World frame in millimetres: the table top is z = 0, z points up, the camera looks at the
origin from -y and above. Primitives are intersected as ray intervals [t_in, t_out],
which makes the CSG cut of a 'missing chunk' exact for these convex shapes.
Depth is the camera z coordinate, as a RealSense reports it: rays are scaled so that
the ray parameter t equals depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.frame import Intrinsics

TABLE_X = (-420.0, 420.0)
TABLE_Y = (-300.0, 330.0)
WALL_Y = 700.0
FLOOR_Z = -740.0


def look_at(camera: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation (columns: right, down, forward)."""
    f = target - camera
    f = f / np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r = r / np.linalg.norm(r)
    d = np.cross(f, r)
    return np.stack([r, d, f], axis=1)


@dataclass(frozen=True)
class Camera:
    intrinsics: Intrinsics
    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) camera -> world

    @classmethod
    def looking_at_table(cls, width: int, height: int, distance_mm: float = 470.0,
                         pitch_deg: float = 50.0) -> "Camera":
        p = math.radians(pitch_deg)
        pos = np.array([0.0, -distance_mm * math.cos(p), distance_mm * math.sin(p)])
        return cls(Intrinsics.default(width, height), pos, look_at(pos, np.zeros(3)))

    def rays(self, x0: int = 0, y0: int = 0, x1: int | None = None, y1: int | None = None) -> np.ndarray:
        """World ray directions (N, 3) for a pixel rectangle, scaled so that t is depth."""
        k = self.intrinsics
        x1 = k.width if x1 is None else x1
        y1 = k.height if y1 is None else y1
        v, u = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        cam = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)], -1).reshape(-1, 3)
        return cam @ self.rotation.T.astype(np.float32)

    def project(self, pts: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> pixel coordinates (N, 2) and depth (N,) stacked as (N, 3)."""
        c = (pts - self.position) @ self.rotation
        k = self.intrinsics
        z = np.maximum(c[:, 2], 1e-3)
        return np.stack([c[:, 0] / z * k.fx + k.cx, c[:, 1] / z * k.fy + k.cy, c[:, 2]], -1)


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class Primitive:
    """A box (half extents), an upright-in-local-frame cylinder (radius, half height) or a sphere."""

    shape: str  # "box" | "cylinder" | "sphere"
    center: np.ndarray  # (3,) world
    rotation: np.ndarray  # (3, 3) local -> world
    size: tuple[float, ...]  # box: (ex, ey, ez); cylinder: (r, hh); sphere: (r,)

    def corners(self, pad: float = 0.0) -> np.ndarray:
        """The 8 world-space corners of the primitive's oriented bounding box (grown by pad)."""
        if self.shape == "box":
            e = np.asarray(self.size)
        elif self.shape == "cylinder":
            e = np.array([self.size[0], self.size[0], self.size[1]])
        else:
            e = np.full(3, self.size[0])
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        return self.center + (signs * (e + pad)) @ self.rotation.T

    def bounding_radius(self) -> float:
        if self.shape == "box":
            return float(np.linalg.norm(self.size))
        if self.shape == "cylinder":
            return float(math.hypot(*self.size))
        return float(self.size[0])

    def intersect(self, origin: np.ndarray, dirs: np.ndarray):
        """Ray interval and entry geometry in local coordinates.

        Returns (hit, t_in, t_out, normal_local (N,3), p_local (N,3), face (N,) int).
        """
        R = self.rotation.astype(np.float32)
        o = ((origin - self.center) @ self.rotation).astype(np.float32)  # (3,)
        d = dirs @ R  # (N, 3)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.shape == "box":
                t_in, t_out, face, normal = _box(o, d, np.asarray(self.size, np.float32))
            elif self.shape == "cylinder":
                t_in, t_out, face, normal = _cylinder(o, d, *self.size)
            else:
                t_in, t_out, face, normal = _sphere(o, d, self.size[0])
            hit = (t_in <= t_out) & (t_out > 0) & np.isfinite(t_in)
        p = o + d * np.where(hit, t_in, 0)[:, None]
        if self.shape == "cylinder":
            side = face == 0
            normal[side] = np.stack([p[side, 0], p[side, 1], np.zeros(side.sum(), np.float32)], -1) / self.size[0]
        elif self.shape == "sphere":
            normal = p / self.size[0]
        return hit, t_in, t_out, normal, p, face

    def world_normal(self, n_local: np.ndarray) -> np.ndarray:
        return n_local @ self.rotation.T.astype(np.float32)


def _box(o, d, e):
    t1 = (-e - o) / d
    t2 = (e - o) / d
    tn = np.minimum(t1, t2)
    tf = np.maximum(t1, t2)
    tn = np.nan_to_num(tn, nan=-np.inf)
    tf = np.nan_to_num(tf, nan=np.inf)
    face = np.argmax(tn, axis=1)
    t_in = np.take_along_axis(tn, face[:, None], 1)[:, 0]
    t_out = tf.min(axis=1)
    normal = np.zeros_like(d)
    idx = np.arange(len(d))
    normal[idx, face] = -np.sign(d[idx, face])
    return t_in, t_out, face, normal


def _quadratic(a, b, c):
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0))
    t1 = (-b - sq) / a
    t2 = (-b + sq) / a
    miss = disc < 0
    t1[miss] = np.inf
    t2[miss] = -np.inf
    return t1, t2


def _sphere(o, d, r):
    t1, t2 = _quadratic((d * d).sum(1), d @ o, float(o @ o - r * r))
    return t1, t2, np.zeros(len(d), np.int64), np.zeros_like(d)


def _cylinder(o, d, r, hh):
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = d[:, 0] * o[0] + d[:, 1] * o[1]
    c = o[0] ** 2 + o[1] ** 2 - r * r
    t1, t2 = _quadratic(a, b, np.float32(c))
    # Rays parallel to the axis: inside the circle means the whole line is in the slab of radii.
    par = a < 1e-12
    inside = c <= 0
    t1[par] = np.where(inside, -np.inf, np.inf)
    t2[par] = np.where(inside, np.inf, -np.inf)
    z1 = (-hh - o[2]) / d[:, 2]
    z2 = (hh - o[2]) / d[:, 2]
    zn = np.nan_to_num(np.minimum(z1, z2), nan=-np.inf)
    zf = np.nan_to_num(np.maximum(z1, z2), nan=np.inf)
    cap = zn > t1
    t_in = np.where(cap, zn, t1)
    t_out = np.minimum(t2, zf)
    face = cap.astype(np.int64)  # 0 side, 1 cap
    normal = np.zeros_like(d)
    normal[:, 2] = np.where(cap, -np.sign(d[:, 2]), 0)
    return t_in, t_out, face, normal


def sphere_interval(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, r: float):
    """[t_in, t_out] of rays through a world-space sphere (inf/-inf where they miss)."""
    o = (origin - center).astype(np.float32)
    with np.errstate(invalid="ignore"):
        return _quadratic((dirs * dirs).sum(1), dirs @ o, float(o @ o - r * r))


def surface_uv(prim: Primitive, p: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texture coordinates in millimetres on the primitive's surface."""
    if prim.shape == "box":
        u = np.where(face == 0, p[:, 1], p[:, 0])
        v = np.where(face == 2, p[:, 1], p[:, 2])
        return u, v
    r = prim.size[0]
    u = np.arctan2(p[:, 1], p[:, 0]) * r
    if prim.shape == "cylinder":
        cap = face == 1
        return np.where(cap, p[:, 0] + 1000.0, u), np.where(cap, p[:, 1], p[:, 2])
    return u, p[:, 2]


def static_background(cam: Camera, table_albedo: np.ndarray, wall_albedo: np.ndarray,
                      rng: np.random.Generator):
    """Depth (H, W) float32, albedo (H, W, 3) and wall mask (H, W) of the empty station.

    Every background pixel is either horizontal (table, floor) or the wall facing the
    camera, so lighting it takes one scalar per kind.
    """
    k = cam.intrinsics
    d = cam.rays()  # (N, 3)
    c = cam.position.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_table = np.where(d[:, 2] < 0, -c[2] / d[:, 2], np.inf)
        p = c + d * t_table[:, None]
        on_table = (p[:, 0] >= TABLE_X[0]) & (p[:, 0] <= TABLE_X[1]) & (p[:, 1] >= TABLE_Y[0]) & (p[:, 1] <= TABLE_Y[1])
        t_wall = np.where(d[:, 1] > 0, (WALL_Y - c[1]) / d[:, 1], np.inf)
        t_floor = np.where(d[:, 2] < 0, (FLOOR_Z - c[2]) / d[:, 2], np.inf)
    t_other = np.minimum(t_wall, t_floor)
    depth = np.where(on_table, t_table, t_other)
    normal = np.zeros_like(d)
    normal[:, 2] = 1.0
    wall = ~on_table & (t_wall < t_floor)
    normal[wall] = (0.0, -1.0, 0.0)
    # Table texture: fine grain along x plus broad blotches, in table coordinates.
    px, py = p[:, 0], p[:, 1]
    grain = 0.06 * np.sin(px * 0.35 + 3.0 * np.sin(py * 0.02)) + 0.04 * np.sin(py * 0.013 + px * 0.004)
    albedo = np.where(on_table[:, None], table_albedo * (1.0 + grain[:, None]), wall_albedo)
    albedo = np.clip(albedo, 0, 1).astype(np.float32)
    h, w = k.height, k.width
    return (np.nan_to_num(depth, posinf=0.0).reshape(h, w).astype(np.float32),
            albedo.reshape(h, w, 3), wall.reshape(h, w))

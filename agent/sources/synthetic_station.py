"""The synthetic station: one camera over one table, rendering boxes, cylinders and spheres
with defects, RealSense-like depth noise and exact ground truth (`SyntheticSource` in
synthetic.py streams its frames).

For tests, demos and scale, never as evidence of detection quality on real parts.
One `SyntheticStation` is fixed per seed; each frame draws a part, its pose, size, colour,
texture, the light and the sensor noise from a generator seeded by (station seed, frame
key), so every frame is reproducible alone.

What a class's parts are (`variety`):
- "family": every part is a new product of the class's shape: its own size, proportions,
  colours and pattern (a cylinder may be a tall striped can or a short plain tube lying down).
- "product": each class is one product of the station, fixed by the station seed (its
  shape, proportions, colours, pattern and finish), made to a tolerance: every part
  differs by up to 3% in size and 4% in colour, and lies anywhere on the table at any
  yaw. That is a production line's station, which inspects one product; the wrong-class
  parts are the other products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from agent.frame import RGBDFrame
from agent.sources.scene import Camera, Primitive, rot_y, rot_z, sphere_interval, static_background, surface_uv

CLASSES = ("rectangle", "cylinder", "sphere")
DEFECTS = ("dent", "hole", "chunk", "blemish", "foreign")
VARIETIES = ("family", "product")
SIZE_TOLERANCE = 0.03    # "product": a part's size within +-3% of the product's
COLOUR_TOLERANCE = 0.04  # and each colour channel within +-4%
_BANK_PAD = 256
_BASELINE_MM = 50.0   # RealSense D4xx stereo baseline
_SUBPIXEL = 0.08      # disparity quantisation, pixels
_DISP_NOISE = 0.05    # disparity noise RMS, pixels
_PALETTE = np.array([
    [0.62, 0.45, 0.28], [0.70, 0.55, 0.36], [0.15, 0.35, 0.75], [0.80, 0.15, 0.12],
    [0.90, 0.80, 0.15], [0.92, 0.92, 0.90], [0.20, 0.55, 0.25], [0.85, 0.45, 0.10],
    [0.55, 0.55, 0.58], [0.30, 0.20, 0.45]], np.float32)


@dataclass(frozen=True)
class Part:
    """Ground truth of one rendered part."""

    cls: str
    prim: Primitive
    albedo: np.ndarray  # (3,)
    accent: np.ndarray  # (3,)
    pattern: str
    shininess: float
    specular: float


class SyntheticStation:
    """A fixed camera over a table; renders empty scenes and scenes with one part."""

    def __init__(self, width: int = 640, height: int = 480, seed: int = 0, variety: str = "family") -> None:
        if width < 32 or height < 32:
            raise ValueError(f"synthetic frames must be at least 32x32, got {width}x{height}")
        if variety not in VARIETIES:
            raise ValueError(f"unknown variety {variety!r}; choose from {', '.join(VARIETIES)}")
        self.seed, self.variety = seed, variety
        self._products: dict[str, Part] = {}
        rng = np.random.default_rng([seed, 0xC0FFEE])
        self.camera = Camera.looking_at_table(width, height, distance_mm=float(rng.uniform(400, 440)),
                                              pitch_deg=float(rng.uniform(47, 53)))
        table = np.array([0.55, 0.50, 0.45], np.float32) * rng.uniform(0.8, 1.1, 3).astype(np.float32)
        self.bg_depth, self.bg_albedo, self.bg_wall = static_background(
            self.camera, table, np.array([0.7, 0.7, 0.72], np.float32), rng)
        h, w = height, width
        self._gauss = rng.standard_normal((h, w + _BANK_PAD), dtype=np.float32)
        self._unif = rng.random((h, w + _BANK_PAD), dtype=np.float32)
        self._fb = np.float32(0.9 * self.camera.intrinsics.fx * _BASELINE_MM)
        self._eye = self.camera.position.astype(np.float32)
        # The background's own depth edges (table rim, wall) never move: find them once.
        self._bg_edges = _depth_edges(self.bg_depth)

    # -- parts ---------------------------------------------------------------------------
    def random_part(self, rng: np.random.Generator, cls: str) -> Part:
        """A part of class `cls` drawn from `rng`: a new product ("family"), or the station's
        product of that class within its tolerance, anywhere on the table ("product")."""
        if self.variety == "family":
            return self._new_product(rng, cls)
        p = self.product(cls)
        yaw = float(rng.uniform(0, 2 * math.pi))
        cx, cy = rng.uniform(-50, 50), rng.uniform(-35, 35)
        k = float(rng.uniform(1 - SIZE_TOLERANCE, 1 + SIZE_TOLERANCE))  # the shape scaled, so it rests on the table
        prim = Primitive(p.prim.shape, np.array([cx, cy, p.prim.center[2] * k]), rot_z(yaw) @ p.prim.rotation,
                         tuple(float(v) * k for v in p.prim.size))
        tint = rng.uniform(1 - COLOUR_TOLERANCE, 1 + COLOUR_TOLERANCE, (2, 3)).astype(np.float32)
        return Part(cls, prim, np.clip(p.albedo * tint[0], 0, 1), np.clip(p.accent * tint[1], 0, 1), p.pattern,
                    p.shininess, p.specular)

    def product(self, cls: str) -> Part:
        """The station's product of class `cls` ("product" variety): fixed by the station seed,
        at the table's centre."""
        if cls not in self._products:
            if cls not in CLASSES:
                raise ValueError(f"unknown synthetic class {cls!r}; choose from {', '.join(CLASSES)}")
            self._products[cls] = self._new_product(np.random.default_rng([self.seed, 0x9D0C, CLASSES.index(cls)]),
                                                    cls, centred=True)
        return self._products[cls]

    def _new_product(self, rng: np.random.Generator, cls: str, centred: bool = False) -> Part:
        yaw = float(rng.uniform(0, math.pi))
        cx, cy = rng.uniform(-50, 50), rng.uniform(-35, 35)
        if centred:
            cx = cy = 0.0
        if cls == "rectangle":
            e = rng.uniform([22, 22, 15], [75, 60, 70])
            prim = Primitive("box", np.array([cx, cy, e[2]]), rot_z(yaw), tuple(float(x) for x in e))
            pattern = rng.choice(["plain", "tape", "print", "stripes"])
        elif cls == "cylinder":
            r, hh = rng.uniform(22, 42), rng.uniform(30, 70)
            if rng.random() < 0.3:  # lying tube
                prim = Primitive("cylinder", np.array([cx, cy, r]), rot_z(yaw) @ rot_y(math.pi / 2), (float(r), float(hh)))
            else:
                prim = Primitive("cylinder", np.array([cx, cy, hh]), np.eye(3), (float(r), float(hh)))
            pattern = rng.choice(["plain", "label", "stripes", "print"])
        elif cls == "sphere":
            r = rng.uniform(25, 62)
            prim = Primitive("sphere", np.array([cx, cy, r]), rot_z(yaw), (float(r),))
            pattern = rng.choice(["plain", "stripes", "checker", "print"])
        else:
            raise ValueError(f"unknown synthetic class {cls!r}; choose from {', '.join(CLASSES)}")
        pal = _PALETTE[rng.permutation(len(_PALETTE))[:2]] * rng.uniform(0.8, 1.1, (2, 3)).astype(np.float32)
        return Part(cls, prim, np.clip(pal[0], 0, 1), np.clip(pal[1], 0, 1), str(pattern),
                    shininess=float(rng.uniform(8, 60)), specular=float(rng.uniform(0.0, 0.5)))

    @staticmethod
    def _texture(part: Part, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        a, b = part.albedo, part.accent
        if part.pattern == "tape":
            t = (np.abs(u) < 12)[:, None]
        elif part.pattern == "label":
            t = (np.abs(v) < part.prim.size[1] * 0.45)[:, None]
        elif part.pattern == "stripes":
            t = (np.sin(u * 0.25) > 0.3)[:, None]
        elif part.pattern == "checker":
            t = ((np.floor(u / 18) + np.floor(v / 18)) % 2 == 0)[:, None]
        elif part.pattern == "print":
            t = ((np.sin(u * 0.9) * np.sin(v * 0.7) > 0.6) & (np.abs(v) < 20))[:, None]
            b = a * 0.2
        else:
            return np.broadcast_to(a, (len(u), 3)).copy()
        return np.where(t, b, a)

    # -- rendering -----------------------------------------------------------------------
    def _roi(self, prim: Primitive, pad: float) -> tuple[int, int, int, int] | None:
        """Pixel rectangle (x0, y0, x1, y1) covering the primitive grown by `pad` mm."""
        k = self.camera.intrinsics
        uvz = self.camera.project(prim.corners(pad))
        x0 = int(max(0, math.floor(uvz[:, 0].min()) - 2))
        y0 = int(max(0, math.floor(uvz[:, 1].min()) - 2))
        x1 = int(min(k.width, math.ceil(uvz[:, 0].max()) + 3))
        y1 = int(min(k.height, math.ceil(uvz[:, 1].max()) + 3))
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def render(self, rng: np.random.Generator, part: Part | None, defect: str | None = None,
               timestamp: float = 0.0) -> RGBDFrame:
        """One noisy RGB-D frame of the station with `part` on it (None: the empty table)."""
        if defect is not None and defect not in DEFECTS:
            raise ValueError(f"unknown defect {defect!r}; choose from {', '.join(DEFECTS)}")
        if defect is not None and part is None:
            raise ValueError("a defect needs a part")
        elev, azim = math.radians(rng.uniform(35, 80)), rng.uniform(0, 2 * math.pi)
        light = np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)], np.float32)
        ambient, diffuse = float(rng.uniform(0.25, 0.45)), float(rng.uniform(0.55, 0.8))
        exposure = float(rng.uniform(0.85, 1.15))

        depth = self.bg_depth.copy()
        s_table = exposure * (ambient + diffuse * max(float(light[2]), 0.0))
        s_wall = exposure * (ambient + diffuse * max(-float(light[1]), 0.0))
        shade = np.where(self.bg_wall, np.float32(s_wall), np.float32(s_table))
        color = self.bg_albedo * shade[..., None]
        drop_p = np.full(depth.shape, 0.002, np.float32)
        edges = self._bg_edges.copy()
        truth: dict = {"class": None, "defect": None, "defect_px": 0}
        if part is not None:
            self._render_part(rng, part, defect, light, ambient * exposure, diffuse * exposure,
                              depth, color, drop_p, edges, truth)
        rgb, depth16 = self._sensor(rng, depth, color, drop_p, edges)
        k = self.camera.intrinsics
        truth.update(station_seed=self.seed, width=k.width, height=k.height)
        return RGBDFrame(rgb=rgb, depth=depth16, timestamp=timestamp, intrinsics=k, meta=truth)

    def _render_part(self, rng, part, defect, light, ambient, diffuse, depth, color, drop_p, edges, truth):
        fg_r = float(rng.uniform(6, 14))
        # The defect draws from its own generator, seeded from `rng` whether or not there is a
        # defect: the same rng renders the same scene (pose, light, sensor noise) with and
        # without it, so twins differ by the defect alone (`adgan dataset synth-damage`).
        drng = np.random.default_rng(int(rng.integers(2**63)))
        roi = self._roi(part.prim, 2 * fg_r + 1 if defect == "foreign" else 1.0)
        if roi is None:
            return
        x0, y0, x1, y1 = roi
        rays = self.camera.rays(x0, y0, x1, y1)
        eye = self._eye
        hit, t_in, t_out, n_loc, p_loc, face = part.prim.intersect(eye, rays)
        t = np.where(hit, t_in, np.inf)
        normal = part.prim.world_normal(n_loc)
        u, v = surface_uv(part.prim, p_loc, face)
        albedo = self._texture(part, u, v)
        spec_k = np.full(len(t), part.specular, np.float32)
        changed = np.zeros(len(t), bool)
        dent = None
        truth.update({"class": part.cls, "shape": part.prim.shape, "center_mm": part.prim.center.tolist(),
                      "size_mm": list(part.prim.size), "pattern": part.pattern})
        visible = hit & (t < depth[y0:y1, x0:x1].reshape(-1))
        if defect is not None and visible.any():
            # The defect sits on a visible surface point, so it can be seen.
            q = int(drng.choice(np.flatnonzero(visible)))
            pq, nq = eye + rays[q] * t[q], normal[q]
            pts = eye + rays * np.where(hit, t, 0)[:, None]
            dist = np.linalg.norm(pts - pq, axis=1)
            if defect == "chunk":
                rc = float(drng.uniform(16, 32))
                sc = pq - nq * rc * 0.35
                s_in, s_out = sphere_interval(eye, rays, sc, rc)
                cut = hit & (s_in <= t) & (t < s_out)
                inner = cut & (s_out < t_out)
                t = np.where(cut, np.where(inner, s_out, np.inf), t)
                p_in = eye + rays[inner] * s_out[inner, None]
                normal[inner] = -(p_in - sc) / rc
                albedo[inner] = albedo[inner] * 0.55 + 0.25
                changed |= cut
            elif defect == "dent":
                rd, dd = float(drng.uniform(10, 20)), float(drng.uniform(4, 9))
                w = np.clip(1 - (dist / rd) ** 2, 0, 1) * hit
                t = t + dd * w
                # Tilt normals towards the dent centre so the light shows the dent.
                radial = (pts - pq) / np.maximum(dist, 1e-3)[:, None]
                normal = normal - (w * 1.2)[:, None] * radial
                normal /= np.linalg.norm(normal, axis=1, keepdims=True)
                changed |= w > 0.05
                dent = w
            elif defect == "hole":
                rh = float(drng.uniform(5, 11))
                m = hit & (dist < rh)
                t = np.where(m, t + 1.5 * rh, t)
                albedo[m] = albedo[m] * 0.08
                drop_p_roi = drop_p[y0:y1, x0:x1].reshape(-1)
                drop_p_roi[m] = 0.5
                drop_p[y0:y1, x0:x1] = drop_p_roi.reshape(y1 - y0, x1 - x0)
                changed |= m
            elif defect == "blemish":
                rb = float(drng.uniform(7, 18))
                ang = np.arctan2(pts[:, 1] - pq[1], pts[:, 0] - pq[0])
                edge = rb * (1 + 0.25 * np.sin(5 * ang + drng.uniform(0, 6)))
                w = np.clip((edge - dist) / 3.0, 0, 1) * hit
                tint = np.array(drng.choice([[0.35, 0.18, 0.08], [0.05, 0.05, 0.05], [0.95, 0.95, 0.9], [0.2, 0.6, 0.2]]), np.float32)
                albedo = albedo * (1 - w[:, None]) + tint * w[:, None]
                changed |= w > 0.05
            else:  # foreign object stuck on the part
                fc = pq + nq * fg_r
                f_in, _ = sphere_interval(eye, rays, fc, fg_r)
                m = np.isfinite(f_in) & (f_in > 0) & (f_in < t)
                t = np.where(m, f_in, t)
                pf = eye + rays[m] * f_in[m, None]
                normal[m] = (pf - fc) / fg_r
                albedo[m] = np.array(drng.choice(_PALETTE), np.float32)
                spec_k[m] = 0.6
                changed |= m
            truth["defect"] = defect
        # Composite with the background (z test).
        sub_d = depth[y0:y1, x0:x1].reshape(-1)
        front = t < sub_d
        view = -rays * (1 / np.sqrt((rays * rays).sum(1)))[:, None]
        ndl = np.maximum((normal * light).sum(1), 0)
        half = light + view
        half *= (1 / np.sqrt((half * half).sum(1)))[:, None]
        spec = spec_k * np.clip((normal * half).sum(1), 0, 1) ** part.shininess
        col = albedo * (ambient + diffuse * ndl)[:, None] + spec[:, None]
        if dent is not None:
            col *= (1 - 0.25 * dent)[:, None]
        sub_c = color[y0:y1, x0:x1].reshape(-1, 3)
        sub_p = drop_p[y0:y1, x0:x1].reshape(-1)
        sub_d = np.where(front, t, sub_d)
        sub_c = np.where(front[:, None], col, sub_c)
        # RealSense loses depth on dark and on specular patches.
        lum = albedo @ np.array([0.3, 0.59, 0.11], np.float32)
        sub_p = np.where(front & (lum < 0.1), np.maximum(sub_p, 0.6), sub_p)
        sub_p = np.where(front & (spec > 0.45), np.maximum(sub_p, 0.8), sub_p)
        hh, ww = y1 - y0, x1 - x0
        depth[y0:y1, x0:x1] = sub_d.reshape(hh, ww)
        color[y0:y1, x0:x1] = sub_c.reshape(hh, ww, 3)
        drop_p[y0:y1, x0:x1] = sub_p.reshape(hh, ww)
        # Depth edges of the part, with a one pixel ring so its silhouette is included.
        ey0, ey1, ex0, ex1 = max(y0 - 1, 0), min(y1 + 1, depth.shape[0]), max(x0 - 1, 0), min(x1 + 1, depth.shape[1])
        edges[ey0:ey1, ex0:ex1] |= _depth_edges(depth[ey0:ey1, ex0:ex1])
        truth["object_px"] = int(front.sum())
        truth["defect_px"] = int((changed & front).sum())
        truth["roi"] = [x0, y0, x1 - x0, y1 - y0]

    def _sensor(self, rng, depth, color, drop_p, edges):
        """RealSense-like depth (disparity noise and quantisation, edge holes, dropouts) and RGB noise."""
        h, w = depth.shape
        o1, o2, o3 = (int(x) for x in rng.integers(0, _BANK_PAD, 3))
        valid = depth > 0
        # Work in disparity, where stereo noise and quantisation are uniform.
        disp = np.maximum(depth, 1.0)
        np.divide(self._fb, disp, out=disp)
        disp += _DISP_NOISE * self._gauss[:, o1:o1 + w]
        disp *= 1 / _SUBPIXEL
        np.rint(disp, out=disp)
        np.maximum(disp, 1.0, out=disp)
        z = np.divide(self._fb / _SUBPIXEL, disp, out=disp)
        # Holes at depth discontinuities (the stereo pair cannot match occluded edges),
        # random dropouts where the surface is dark or specular.
        p = np.where(edges, np.float32(0.7), drop_p)
        keep = (self._unif[:, o2:o2 + w] >= p) & valid
        np.minimum(z, 65535, out=z)
        z += 0.5
        z *= keep
        depth16 = z.astype(np.uint16)  # truncating z + 0.5 rounds to the nearest mm
        color += 0.012 * self._gauss[:, o3:o3 + w, None]
        rgb = cv2.convertScaleAbs(color, alpha=255.0)
        return rgb, depth16


def _depth_edges(depth: np.ndarray, jump_mm: float = 12.0) -> np.ndarray:
    """Pixels on either side of a depth jump larger than `jump_mm`."""
    e = np.zeros(depth.shape, bool)
    dx = np.abs(np.diff(depth, axis=1)) > jump_mm
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    dy = np.abs(np.diff(depth, axis=0)) > jump_mm
    e[1:] |= dy
    e[:-1] |= dy
    return e

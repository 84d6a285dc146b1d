"""The on-disk dataset format: the paper's sample layout and our raw layout, read and written
(by training, calibration, the CLI and `FolderSource`, which replays a folder).

Paper layout (already segmented; read as is):
    <class>/rgb/N.jpg    RGB, background and table zeroed
    <class>/depth/N.png  8-bit normalised depth, 0 where removed
Raw layout (what a station records; goes through segmentation):
    <dir>/rgb/N.png      RGB (PNG, lossless)
    <dir>/depth/N.png    16-bit depth in millimetres (or N.tif/N.tiff: 32-bit float millimetres,
                         NaN or infinity where the camera had no measurement)
    <dir>/meta/N.json    {"timestamp": s, "intrinsics": {...}, ...}
The same N names the same capture. A dataset root holds class folders.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from agent import durable
from agent.frame import FrameError, Intrinsics, RGBDFrame, Sample
from agent.segment.preprocess import Preprocessing, reframe
from agent.sources.imagesize import check_size

RGB_EXTS = (".jpg", ".jpeg", ".png")
DEPTH_EXTS = (".png", ".tif", ".tiff")
PREPROCESSING_FILE = "preprocessing.json"


# The IJG (libjpeg) base luminance quantisation table, in natural order; an encoder at quality
# Q scales it by 5000 / Q % (Q < 50) or 200 - 2 Q % (Q >= 50).
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7,
    14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39,
    46, 53, 60, 61, 54, 47, 55, 62, 63])


def jpeg_quality(path: str | Path) -> int | None:
    """The IJG quality (1-100) a JPEG file was written with, from its luminance quantisation
    table (the quality whose table is closest); None for a file that is not a baseline JPEG
    with such a table (PNG, or a truncated file)."""
    data = Path(path).read_bytes()
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: no table before the image data
            return None
        if marker == 0xDB:
            j, end = i + 4, i + 2 + length
            while j < end:
                precision, table_id = data[j] >> 4, data[j] & 15
                n = 128 if precision else 64
                vals = np.frombuffer(data[j + 1:j + 1 + n], ">u2" if precision else "u1").astype(np.float64)
                if table_id == 0 and len(vals) == 64:
                    table = np.empty(64)
                    table[_ZIGZAG] = vals
                    qs = np.arange(1, 101)
                    scale = np.where(qs < 50, 5000.0 / qs, 200.0 - 2 * qs)
                    cand = np.clip(np.floor((_IJG_LUMA[None] * scale[:, None] + 50) / 100), 1, 255)
                    return int(qs[np.argmin(np.abs(cand - table[None]).sum(1))])
                j += 1 + n
        i += 2 + length
    return None


def write_preprocessing(folder: Path, prep: Preprocessing) -> None:
    """Record in a sample folder the recipe that made its samples."""
    folder.mkdir(parents=True, exist_ok=True)
    durable.write_text(folder / PREPROCESSING_FILE, json.dumps(prep.to_dict(), indent=1) + "\n")


def read_preprocessing(folder: Path) -> Preprocessing | None:
    """The recipe recorded in a sample folder, or None (e.g. the paper's own data)."""
    p = Path(folder) / PREPROCESSING_FILE
    if not p.is_file():
        return None
    try:
        return Preprocessing.from_dict(json.loads(p.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{p}: bad preprocessing record: {e}") from None


def check_preprocessing(folder: Path, want: Preprocessing) -> Preprocessing:
    """The recipe `folder`'s samples were made with (the paper's when none is recorded).
    Refuses samples made with another recipe than `want`, except for the size (inputs are
    resized) and "frame" samples for an "object" model (`reframe` crops them to the part)."""
    rec = read_preprocessing(folder) or Preprocessing()
    # size: inputs are resized; rgb_jpeg_quality: what a run found in its training files, for
    # live frames (stored samples are read as stored)
    cmp = replace(rec, size=want.size, rgb_jpeg_quality=want.rgb_jpeg_quality)
    if (rec.framing, want.framing) == ("frame", "object"):
        cmp = replace(cmp, framing="object", margin=want.margin)
    if cmp != want:
        raise ValueError(f"{folder} was made with preprocessing {rec.to_dict()}, the bundle expects "
                         f"{want.to_dict()}; prepare the samples with the bundle's recipe")
    return rec


def read_model_sample(folder: Path, n: int, want: Preprocessing, recorded: Preprocessing | None = None) -> Sample:
    """Sample `n` of `folder` as a model made with `want` sees it (`reframe`); `recorded` is
    the folder's recipe (read from the folder when not given)."""
    if recorded is None:
        recorded = read_preprocessing(folder) or Preprocessing()
    return reframe(read_sample(folder, n), recorded, want)


def parse_frames(spec: str | None, allow_step: bool = False) -> tuple[int, ...] | None:
    """'LO:HI' -> (LO, HI), half-open like a Python slice ('0:700' is frames 0-699).

    Either end may be empty: ':700', '700:'. With allow_step, 'LO:HI:STEP' -> (LO, HI, STEP):
    every STEP-th frame number from LO (neighbouring frames are near-duplicates, so an
    evaluation can thin them).
    """
    if spec is None or spec == "":
        return None
    form = "LO:HI[:STEP]" if allow_step else "LO:HI"
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > (3 if allow_step else 2):
        raise ValueError(f"--frames takes {form} (half-open, e.g. 0:700), got {spec!r}")
    try:
        a = int(parts[0]) if parts[0].strip() else 0
        b = int(parts[1]) if parts[1].strip() else 2**62
        step = int(parts[2]) if len(parts) == 3 and parts[2].strip() else 1
    except ValueError:
        raise ValueError(f"--frames takes integers {form}, got {spec!r}") from None
    if a < 0 or b <= a or step < 1:
        raise ValueError(f"--frames {spec!r} selects nothing: need 0 <= LO < HI and STEP >= 1")
    return (a, b, step) if step > 1 else (a, b)


def frame_numbers(folder: Path, frames: tuple[int, int] | None = None) -> list[int]:
    """Sorted frame numbers N that have both rgb/N.* and depth/N.png under `folder`."""
    rgb_dir, depth_dir = folder / "rgb", folder / "depth"
    if not rgb_dir.is_dir() or not depth_dir.is_dir():
        raise FileNotFoundError(f"{folder} is not a sample folder: it needs rgb/ and depth/ inside")
    rgb = {int(p.stem) for p in rgb_dir.iterdir() if p.suffix.lower() in RGB_EXTS and p.stem.isdigit()}
    depth = {int(p.stem) for p in depth_dir.iterdir() if p.suffix.lower() in DEPTH_EXTS and p.stem.isdigit()}
    nums = sorted(rgb & depth)
    if frames is not None:
        step = frames[2] if len(frames) > 2 else 1
        nums = [n for n in nums if frames[0] <= n < frames[1] and (n - frames[0]) % step == 0]
    return nums


def is_sample_folder(p: Path) -> bool:
    return (p / "rgb").is_dir() and (p / "depth").is_dir()


def class_folders(root: str | Path) -> list[Path]:
    """The sample folders under a dataset root, or [root] when root is one itself. Hidden folders
    are not classes (`.<class>.new-*`: one being written whole, or left by a run that was killed)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist or is not a folder")
    if is_sample_folder(root):
        return [root]
    found = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and is_sample_folder(p))
    if not found:
        raise FileNotFoundError(f"{root} holds no sample folders (<class>/rgb and <class>/depth)")
    return found


def _image_path(folder: Path, sub: str, n: int, exts: Sequence[str]) -> Path:
    for ext in exts:
        p = folder / sub / f"{n}{ext}"
        if p.exists():
            return p
    raise FrameError(f"{folder}/{sub} has no image for frame {n}")


def rgb_path(folder: Path, n: int) -> Path:
    return _image_path(folder, "rgb", n, RGB_EXTS)


def depth_path(folder: Path, n: int) -> Path:
    return _image_path(folder, "depth", n, DEPTH_EXTS)


def float_depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """Float millimetres -> uint16 millimetres; NaN, infinite and negative values become 0 (no depth)."""
    d = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    return np.clip(np.rint(d), 0, 65535).astype(np.uint16)


def _imread(path: Path, flags: int) -> np.ndarray:
    # cv2.imread returns None for unreadable files instead of raising; make that an error.
    data = np.fromfile(str(path), np.uint8) if path.is_file() else None
    if data is None or data.size == 0:
        raise FrameError(f"{path}: missing or empty file")
    check_size(data.tobytes(), path)  # (a small file may declare a huge image)
    img = cv2.imdecode(data, flags)
    if img is None:
        raise FrameError(f"{path}: not a readable image (corrupt or unsupported)")
    return img


def read_rgb(path: Path) -> np.ndarray:
    img = _imread(path, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[:, :, ::-1])


def read_sample(folder: Path, n: int) -> Sample:
    """Frame n of a paper-layout folder as a Sample."""
    rgb = read_rgb(rgb_path(folder, n))
    dpath = depth_path(folder, n)
    depth = _imread(dpath, cv2.IMREAD_UNCHANGED)
    if depth.ndim == 3:  # some tools save grey as 3 equal channels
        depth = depth[:, :, 0]
    if depth.dtype != np.uint8:
        raise FrameError(f"{dpath}: paper-layout depth must be 8-bit, got {depth.dtype}")
    if depth.shape != rgb.shape[:2] or depth.shape[0] != depth.shape[1]:
        raise FrameError(f"{folder} frame {n}: rgb {rgb.shape[:2]} and depth {depth.shape} "
                         "must be the same square size")
    return Sample(rgb=rgb, depth=depth, meta={"path": str(dpath.parent.parent), "frame": n,
                                              "class": folder.name})


def read_raw_frame(folder: Path, n: int) -> RGBDFrame:
    """Frame n of a raw-layout folder as an RGBDFrame."""
    rgb = read_rgb(rgb_path(folder, n))
    dpath = depth_path(folder, n)
    depth = _imread(dpath, cv2.IMREAD_UNCHANGED)
    if depth.ndim == 2 and depth.dtype in (np.float32, np.float64):
        depth = float_depth_to_mm(depth)
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise FrameError(f"{dpath}: raw depth must be single-channel 16-bit (mm) or 32-bit float (mm), "
                         f"got {depth.dtype} {depth.shape}")
    meta_path = folder / "meta" / f"{n}.json"
    try:
        meta = json.loads(meta_path.read_text())
        intr = Intrinsics.from_dict(meta["intrinsics"])
        ts = float(meta["timestamp"])
    except FileNotFoundError:
        raise FrameError(f"{meta_path}: missing (raw frames need their metadata)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise FrameError(f"{meta_path}: bad metadata: {e}") from None
    extra = {k: v for k, v in meta.items() if k not in ("timestamp", "intrinsics")}
    extra.update(path=str(folder), frame=n)
    try:
        return RGBDFrame(rgb=rgb, depth=depth, timestamp=ts, intrinsics=intr, meta=extra)
    except ValueError as e:
        raise FrameError(f"{folder} frame {n}: {e}") from None


def _imwrite(path: Path, img: np.ndarray, params: Sequence[int] = ()) -> None:
    ok, buf = cv2.imencode(path.suffix, img, list(params))
    if not ok:
        raise OSError(f"could not encode {path}")
    durable.write_bytes(path, buf.tobytes())  # (a full disk or a power cut leaves no half-written file)


def write_sample(folder: Path, n: int, sample: Sample, jpeg_quality: int = 95) -> None:
    """Write a Sample in the paper's layout (rgb/N.jpg, depth/N.png)."""
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    _imwrite(folder / "rgb" / f"{n}.jpg", sample.rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    _imwrite(folder / "depth" / f"{n}.png", sample.depth)


def write_mask(folder: Path, n: int, mask: np.ndarray) -> None:
    """Write a ground-truth defect mask beside a sample: mask/N.png, 255 where damaged."""
    (folder / "mask").mkdir(parents=True, exist_ok=True)
    _imwrite(folder / "mask" / f"{n}.png", mask.astype(np.uint8) * 255)


def read_mask(folder: Path, n: int) -> np.ndarray:
    """The ground-truth defect mask of sample n (True where damaged). Masks made elsewhere are read
    as they are usually written: 0/255 (ours, MVTec AD's; smoothed edges cut at half), 0/1 or
    region labels (any value above 0), 8 or 16 bits, grey or colour (any channel)."""
    p = Path(folder) / "mask" / f"{n}.png"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no ground-truth mask")
    m = _imread(p, cv2.IMREAD_UNCHANGED)
    if m.ndim == 3:
        m = m[:, :, :3].max(axis=2)  # (an alpha channel is not the mask)
    half = np.iinfo(m.dtype).max // 2 if m.dtype.kind == "u" else 0.5
    return m > half if m.max() > half else m > 0


def write_raw_frame(folder: Path, n: int, frame: RGBDFrame) -> None:
    """Write an RGBDFrame in the raw layout (metadata, lossless RGB, 16-bit depth). The depth
    image comes last, each file through a temporary name: a frame cut off by a kill or a full
    disk has no depth image, so no reader lists it (`frame_numbers`)."""
    for sub in ("rgb", "depth", "meta"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in frame.meta.items() if k not in ("path", "frame")}
    meta.update(timestamp=frame.timestamp, intrinsics=frame.intrinsics.to_dict())
    durable.write_text(folder / "meta" / f"{n}.json", json.dumps(meta, default=_jsonable))
    _imwrite(folder / "rgb" / f"{n}.png", frame.rgb[:, :, ::-1])
    _imwrite(folder / "depth" / f"{n}.png", frame.depth)


def raw_frame_files(folder: Path, n: int) -> list[Path]:
    """Every file of raw frame `n` under `folder` that exists, temporary ones included."""
    files = [folder / sub / f"{n}{ext}" for sub, ext in (("rgb", ".png"), ("depth", ".png"), ("meta", ".json"))]
    return [p for f in files for p in (f, f.with_name(f.name + ".tmp")) if p.exists()]


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def iter_samples(root: str | Path, frames: tuple[int, int] | None = None,
                 classes: Iterable[str] | None = None) -> Iterable[tuple[str, int, Sample]]:
    """(class, frame number, Sample) for every paper-layout sample under a dataset root."""
    wanted = set(classes) if classes is not None else None
    for folder in class_folders(root):
        if wanted is not None and folder.name not in wanted:
            continue
        for n in frame_numbers(folder, frames):
            yield folder.name, n, read_sample(folder, n)

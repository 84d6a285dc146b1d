"""An image's size from its file's header, before it is decoded.

A small file can declare a huge image: a PNG of 389 kB decodes to 20000 x 20000 pixels, 2.4 GB as
colour, and a station replaying a folder (or a workstation preparing, training or evaluating)
would spend its memory on it, on a Jetson whose memory the GPU shares. Files that declare more
than MAX_IMAGE_PIXELS are refused undecoded (FrameError: a bad frame, said and skipped like any).
PNG, JPEG and TIFF, the formats samples and frames come in; a header that cannot be read is left
to the decoder (and OpenCV's own limit, 2^30 pixels).
"""
from __future__ import annotations

import struct

from agent.frame import FrameError

MAX_IMAGE_PIXELS = 50_000_000  # a 12-megapixel industrial camera's frame is a quarter of it
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # JPEG frame headers


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that a PNG, JPEG or TIFF file's header declares, or None."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            if data[12:16] != b"IHDR":  # (a corrupt file: the decoder says so)
                return None
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except (struct.error, IndexError):
        pass
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        else:
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    end = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", data[4:8])
    (n,) = struct.unpack(end + "H", data[ifd:ifd + 2])
    size = {}
    for k in range(n):
        e = ifd + 2 + 12 * k
        tag, kind = struct.unpack(end + "HH", data[e:e + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: a SHORT or a LONG
            size[tag] = struct.unpack(end + ("H" if kind == 3 else "I"), data[e + 8:e + (10 if kind == 3 else 12)])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def check_size(data: bytes, name: object) -> None:
    """Refuse, undecoded, a file whose header declares more than MAX_IMAGE_PIXELS."""
    size = image_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise FrameError(f"{name}: declares {size[0]} x {size[1]} pixels, more than {MAX_IMAGE_PIXELS:,} (no camera "
                         "frame is this large; decoding it would take gigabytes): not decoded")

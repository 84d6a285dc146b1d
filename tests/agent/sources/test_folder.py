import numpy as np
import pytest

from agent.frame import FrameError, RGBDFrame, Sample
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import (class_folders, frame_numbers, iter_samples, parse_frames, read_raw_frame,
                                   write_raw_frame, write_sample)
from agent.sources.folder import FolderSource
from agent.sources.synthetic import SyntheticSource


@pytest.mark.parametrize("spec, want", [("0:700", (0, 700)), ("700:1000", (700, 1000)), (":5", (0, 5)),
                                        ("5:", (5, 2**62)), (None, None), ("", None)])
def test_parse_frames(spec, want):
    assert parse_frames(spec) == want


@pytest.mark.parametrize("spec", ["5", "a:b", "10:5", "-1:3", "3:3"])
def test_parse_frames_rejects(spec):
    with pytest.raises(ValueError, match="--frames"):
        parse_frames(spec)


def test_paper_data_loads_with_right_shapes_and_ranges(paper_data):
    folders = class_folders(paper_data)
    assert [f.name for f in folders] == ["cylinder", "rectangle", "sphere"]
    for folder in folders:
        nums = frame_numbers(folder)
        assert len(nums) == 335 and nums[0] == 0 and nums[-1] < 1000
        train = frame_numbers(folder, parse_frames("0:700"))
        test = frame_numbers(folder, parse_frames("700:1000"))
        assert set(train).isdisjoint(test) and len(train) + len(test) == 335
        src = FolderSource(folder, parse_frames("700:1000"))
        assert src.segmented and len(src) == len(test)
        for s in list(src)[:10]:
            assert isinstance(s, Sample) and s.rgb.shape == (64, 64, 3) and s.depth.shape == (64, 64)
            assert s.depth.max() > 0 and (s.depth == 0).mean() > 0.5  # object on a removed background
            x = sample_to_input(s)
            assert x.shape == (4, 64, 64) and -1 <= x.min() and x.max() <= 1


def test_iter_samples_filters_classes_and_frames(paper_data):
    got = list(iter_samples(paper_data, parse_frames("0:10"), classes=["sphere"]))
    assert [(c, n) for c, n, _ in got] == [("sphere", n) for n in (0, 2, 3, 4, 5, 6, 7, 8, 9)]


def test_raw_layout_roundtrip_is_lossless(tmp_path):
    f = SyntheticSource(seed=2, width=160, height=120).frame(0)
    write_raw_frame(tmp_path, 7, f)
    src = FolderSource(tmp_path)
    assert not src.segmented
    g = src.read()
    assert isinstance(g, RGBDFrame)
    np.testing.assert_array_equal(g.rgb, f.rgb)
    np.testing.assert_array_equal(g.depth, f.depth)
    assert g.intrinsics == f.intrinsics and g.timestamp == f.timestamp and g.meta["class"] == f.meta["class"]
    assert src.read() is None


def _paper_folder(tmp_path, n=3):
    for i in range(n):
        rgb = np.zeros((32, 32, 3), np.uint8)
        rgb[8:24, 8:24] = (10 * i, 100, 200)
        depth = np.zeros((32, 32), np.uint8)
        depth[8:24, 8:24] = 50 + i
        write_sample(tmp_path, i, Sample(rgb, depth))
    return tmp_path


def test_corrupt_file_raises_and_the_source_moves_on(tmp_path):
    folder = _paper_folder(tmp_path)
    (folder / "rgb" / "1.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    src = FolderSource(folder)
    assert src.read().depth[16, 16] == 50
    with pytest.raises(FrameError, match="1.jpg"):
        src.read()
    assert src.read().depth[16, 16] == 52
    assert src.read() is None


def _png_bomb(w: int, h: int) -> bytes:
    """A valid grey PNG of w x h zeros: a few hundred kB that decode to w x h x 3 bytes as colour."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    row = bytes(w + 1)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def test_a_small_file_that_declares_a_huge_image_is_not_decoded_and_the_source_moves_on(tmp_path):
    """A 12000 x 12000 PNG of 180 kB decoded to 432 MB as colour (20000 x 20000: 2.4 GB from 389 kB),
    enough to take a Jetson's memory, in a replayed folder or a training set."""
    folder = _paper_folder(tmp_path)
    bomb = _png_bomb(12000, 12000)
    assert len(bomb) < 1_000_000
    (folder / "rgb" / "1.jpg").unlink()
    (folder / "rgb" / "1.png").write_bytes(bomb)
    src = FolderSource(folder)
    assert src.read().depth[16, 16] == 50
    with pytest.raises(FrameError, match="1.png: declares 12000 x 12000 pixels"):  # (decoded, it said its shape)
        src.read()
    assert src.read().depth[16, 16] == 52


def test_image_headers_give_the_size_the_decoder_gives():
    import cv2

    from agent.sources.imagesize import check_size, image_size
    img = np.random.default_rng(0).integers(0, 255, (23, 37, 3), np.uint8)
    for ext, params, a in ((".png", [], img), (".png", [], (img[..., 0].astype(np.uint16) * 200)),
                           (".jpg", [], img), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], img),
                           (".tif", [], img[..., 0].astype(np.uint16))):
        data = cv2.imencode(ext, a, params)[1].tobytes()
        assert image_size(data) == (37, 23), ext
        check_size(data, "x" + ext)
    assert image_size(b"\xff\xd8 not a jpeg") is None and image_size(b"GIF89a") is None and image_size(b"") is None
    assert image_size(b"\x89PNG\r\n\x1a\n" + bytes(range(40))) is None  # a corrupt header declares nothing
    jpg = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = (9000).to_bytes(2, "big") + (10000).to_bytes(2, "big")  # a header patched by hand
    with pytest.raises(FrameError, match="declares 10000 x 9000 pixels"):
        check_size(bytes(jpg), "x.jpg")
    # a frame header behind 100 kB of metadata (an ICC profile, a thumbnail) is found all the same
    app = b"\xff\xe2" + (65533).to_bytes(2, "big") + bytes(65531)
    with pytest.raises(FrameError, match="declares 10000 x 9000 pixels"):
        check_size(bytes(jpg[:2]) + app + app + bytes(jpg[2:]), "x.jpg")


def test_raw_folder_errors_name_the_file(tmp_path):
    f = SyntheticSource(seed=2, width=64, height=48).frame(0)
    write_raw_frame(tmp_path, 0, f)
    write_raw_frame(tmp_path, 1, f)
    (tmp_path / "meta" / "1.json").write_text("{broken")
    with pytest.raises(FrameError, match="1.json"):
        read_raw_frame(tmp_path, 1)
    # an 8-bit depth PNG in a raw folder is refused
    import cv2
    cv2.imwrite(str(tmp_path / "depth" / "0.png"), np.zeros((48, 64), np.uint8))
    with pytest.raises(FrameError, match="16-bit"):
        read_raw_frame(tmp_path, 0)


def test_missing_or_empty_folders_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="rgb/ and depth/"):
        FolderSource(tmp_path)
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    with pytest.raises(FileNotFoundError, match="no frames"):
        FolderSource(tmp_path)
    with pytest.raises(FileNotFoundError, match="no sample folders"):
        class_folders(tmp_path / "rgb")


def test_loop_replays(tmp_path):
    src = FolderSource(_paper_folder(tmp_path, 2), loop=True)
    vals = [src.read().depth[16, 16] for _ in range(5)]
    assert vals == [50, 51, 50, 51, 50]


def test_parse_frames_with_a_step_thins_the_frame_numbers(paper_data):
    assert parse_frames("700:1000:3", allow_step=True) == (700, 1000, 3)
    assert parse_frames("700:1000:1", allow_step=True) == (700, 1000)
    for spec in ("700:1000:3", "0:10:0"):
        with pytest.raises(ValueError, match="--frames"):
            parse_frames(spec, allow_step=spec == "0:10:0")
    folder = paper_data / "sphere"
    every = frame_numbers(folder, (700, 1000))
    thin = frame_numbers(folder, parse_frames("700:1000:3", allow_step=True))
    assert thin == [n for n in every if (n - 700) % 3 == 0] and 0 < len(thin) < len(every)

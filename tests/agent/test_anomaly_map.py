import numpy as np
import pytest

from agent.decide.anomaly_map import decode_map, encode_map, heat, map_tiles, pixel_map


def test_the_map_shows_where_the_reconstruction_differs():
    x = np.full((4, 32, 32), -1.0, np.float32)
    x[:, 8:24, 8:24] = 0.5
    y = x.copy()
    y[3, 10:12, 20:22] = -0.5  # a dent in depth: 1.0 of difference
    y[0, 2, 3] = -0.9          # a faint speck in red: 0.1
    h = heat(x, y)
    assert h.shape == (32, 32) and h.max() == pytest.approx(0.5) and h[2, 3] == pytest.approx(0.05)
    assert pixel_map(x, y)[3].max() == pytest.approx(0.5) and pixel_map(x, y)[1].max() == 0
    m = encode_map(h)
    assert m["width"] == m["height"] == 32 and m["peak_xy"] == [20, 10] and m["max"] == pytest.approx(0.5)
    assert np.abs(decode_map(m) - h).max() <= 0.5 / 255 + 1e-6
    t = map_tiles(x, y, scale=1)
    assert t.shape == (64, 3 * 33, 3) and t.dtype == np.uint8
    with pytest.raises(ValueError):
        pixel_map(x, y[:3])

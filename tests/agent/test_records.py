"""Stored records check their types and refuse unknown keys (agent/records.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.frame import Intrinsics
from agent.records import Record, record
from agent.scoring.bundle import SearchDefaults
from agent.segment.preprocess import Preprocessing


@pytest.mark.parametrize("cls, bad, why", [
    (SearchDefaults, {"k": "many"}, "k: Input should be a valid integer"),
    (SearchDefaults, {"lr_z": [0.1]}, "lr_z: Input should be a valid number"),
    (SearchDefaults, {"loss": "l1"}, "loss: Input should be 'mse', 'fg' or 'fg_input'"),
    (Preprocessing, {"framing": "crop"}, "framing: Input should be 'frame' or 'object'"),
    (Intrinsics, {"width": 640, "height": 480, "fx": "wide", "fy": 1, "cx": 0, "cy": 0}, "fx: Input should be a valid number"),
    (SearchDefaults, {"k": -1}, "n_seed and seeds_per_call must be >= 1, k >= 0"),
    (SearchDefaults, [("k", 3)], "must be a mapping"),
])
def test_stored_records_refuse_wrong_types_in_one_line(cls, bad, why) -> None:
    with pytest.raises(ValueError, match=why) as e:
        cls.from_dict(bad)
    assert "\n" not in str(e.value)


def test_records_stay_dataclasses_and_take_numpy_numbers() -> None:
    p = Preprocessing(size=np.int64(32))
    assert p.size == 32 and type(p.size) is int
    assert dataclasses.replace(p, margin=0.2).margin == 0.2
    with pytest.raises(ValueError, match="margin"):
        dataclasses.replace(p, margin=5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.size = 64  # type: ignore[misc]
    assert SearchDefaults.from_dict(SearchDefaults(k=5).to_dict()) == SearchDefaults(k=5)


def test_record_needs_the_record_base() -> None:
    with pytest.raises(TypeError, match="Record subclass"):
        @record
        class Loose:  # noqa: F841
            x: int = 1
    assert issubclass(SearchDefaults, Record)

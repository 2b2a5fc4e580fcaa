"""Host/device copies and indexing that do not wait for the device (engine/transfer.py). On this
CPU the waits cannot be seen; what is checked is that each path gives the same tensors."""

from __future__ import annotations

import pytest
import torch

from promptcast.engine.transfer import select_rows, to_device, to_host


@pytest.mark.parametrize(("rows", "a_view"), [
    ([0, 1, 2, 3], True), ([1, 2], True), ([3], True), ([0, 2], False), ([3, 1], False),
])
def test_select_rows_is_indexing_by_the_list(rows: list[int], a_view: bool) -> None:
    frames = torch.arange(4 * 3 * 2, dtype=torch.uint8).reshape(4, 3, 2)
    picked = select_rows(frames, rows)
    assert torch.equal(picked, frames[torch.tensor(rows)])
    # A run of consecutive rows is a slice, a view: no index goes to the device at all.
    assert (picked.untyped_storage().data_ptr() == frames.untyped_storage().data_ptr()) == a_view
    assert select_rows(frames, []).shape == (0, 3, 2)


def test_copies_both_ways_keep_values_and_dtypes() -> None:
    t = torch.randn(2, 3).to(torch.float16)
    assert torch.equal(to_device(t, torch.device("cpu")), t)
    pixels, planes = to_host(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.ones(2, 6, 4))
    assert pixels.shape == (2, 4, 4, 3) and pixels.dtype.name == "uint8"
    assert planes.shape == (2, 6, 4) and float(planes.sum()) == 48.0

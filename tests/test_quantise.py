"""One float → integer rule for every 8/16-bit pixel clipsr writes, shows or measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsr_cli.io.quantise import levels, quantise


def test_rounds_half_to_even_and_clamps():
    x = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.7, np.float32(2.5 / 255)],
                 dtype=np.float32)
    q = quantise(x, 8)
    assert q.dtype == np.uint8
    # 0.5 → 0 and 1.5 → 2 (to even), 127.5 → 128, out-of-range values clamped
    assert q.tolist() == [0, 0, 0, 2, 128, 255, 255, 2]
    q16 = quantise(np.array([-1.0, 0.5, 1.0, 3.0]), 16)
    assert q16.dtype == np.uint16 and q16.tolist() == [0, 32768, 65535, 65535]


def test_tensor_and_array_agree():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3, 17, 19, generator=g) * 1.2 - 0.1
    for bits in (8, 16):
        a = quantise(t, bits)
        assert a.shape == (3, 17, 19) and a.dtype == levels(bits)[0]
        assert np.array_equal(a, quantise(t.numpy(), bits))
    assert np.array_equal(quantise(t.to(torch.bfloat16)), quantise(t.to(torch.bfloat16).float()))
    with pytest.raises(ValueError):
        quantise(t, 12)


def test_every_caller_rounds_the_same_way():
    """compare's rendered images (rounded half up before) and edit's views give the written
    pixels: a value exactly between two levels goes to the even one everywhere."""
    from clipsr_cli.tasks.compare import _to_uint8
    from clipsr_cli.tasks.edit_render import to_uint8

    x = torch.full((1, 3, 2, 2), 0.5)  # 127.5 levels
    assert _to_uint8(x).tolist() == to_uint8(x).tolist() == [[[128] * 3] * 2] * 2
    x = torch.full((1, 3, 1, 1), 0.5 / 255)  # 0.5 levels: half up gave 1
    assert _to_uint8(x).ravel().tolist() == [0, 0, 0]

"""Batches made on the device: crop-and-flip and cutout against per-image torch ops, normalization as Dataset's."""

import pytest
import torch
import torch.nn.functional as F

from dcsim.data import Dataset
from dcsim.data.augment import crop_flip, cutout, random_crop_flip
from dcsim.training.device_batches import DeviceSplit


def _reference(x, oy, ox, flip, padding):
    """One image at a time: pad, slice the window, mirror."""
    h, w = x.shape[2:]
    out = []
    for i in range(len(x)):
        img = F.pad(x[i], (padding,) * 4)[:, int(oy[i]) : int(oy[i]) + h, int(ox[i]) : int(ox[i]) + w]
        out.append(img.flip(-1) if bool(flip[i]) else img)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_flip_matches_per_image_ops(dtype, padding):
    g = torch.Generator().manual_seed(padding)
    x = torch.randint(0, 256, (9, 3, 7, 5), generator=g).to(dtype)
    oy = torch.randint(0, 2 * padding + 1, (9,), generator=g)
    ox = torch.randint(0, 2 * padding + 1, (9,), generator=g)
    flip = torch.randint(0, 2, (9,), generator=g).bool()
    out = crop_flip(x, oy, ox, flip, padding)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, _reference(x, oy, ox, flip, padding))


def test_random_crop_flip_draws_offsets_then_flips():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(3)
    oy, ox = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flip = torch.randint(0, 2, (6,), generator=g).bool()
    out = random_crop_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, _reference(x, oy, ox, flip, 4))
    assert not torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(4)))


def _cutout_reference(x, cy, cx, size):
    """One image at a time: zero the clipped square by slicing."""
    out = x.clone()
    h, w = x.shape[2:]
    for i in range(len(x)):
        top, left = int(cy[i]) - size // 2, int(cx[i]) - size // 2
        out[i, :, max(top, 0) : max(min(top + size, h), 0), max(left, 0) : max(min(left + size, w), 0)] = 0
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size", [0, 1, 4, 5, 12])
def test_cutout_matches_per_image_slices(dtype, size):
    g = torch.Generator().manual_seed(size)
    x = torch.randint(1, 256, (11, 3, 7, 9), generator=g).to(dtype)
    cy, cx = torch.randint(0, 7, (11,), generator=g), torch.randint(0, 9, (11,), generator=g)
    cy[:2], cx[:2] = torch.tensor([0, 6]), torch.tensor([0, 8])  # the corners: the square clipped
    out = cutout(x, cy, cx, size)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, _cutout_reference(x, cy, cx, size))
    zeros = int((out == 0).sum()) // 3  # x has no zeros: each zero pixel (in all 3 channels) is cut out
    assert (zeros > 0) == (size > 0) and zeros <= 11 * size * size


def test_random_crop_flip_cutout_draws_after_the_flips():
    x = torch.randint(1, 256, (6, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(5)
    oy, ox = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    flip = torch.randint(0, 2, (6,), generator=g).bool()
    cy, cx = torch.randint(0, 8, (6,), generator=g), torch.randint(0, 8, (6,), generator=g)
    out = random_crop_flip(x, torch.Generator().manual_seed(5), padding=2, cutout_size=3)
    assert torch.equal(out, _cutout_reference(_reference(x, oy, ox, flip, 2), cy, cx, 3))
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)  # size 0: crop and flip alone
    assert torch.equal(random_crop_flip(x, g0, 2, cutout_size=0), random_crop_flip(x, g1, 2))
    assert torch.equal(g0.get_state(), g1.get_state())


def test_cutout_errors_name_the_argument():
    x = torch.zeros(2, 1, 4, 4)
    ok = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="cy must lie"):
        cutout(x, torch.tensor([0, 4]), ok, 2)
    with pytest.raises(ValueError, match="cx must be"):
        cutout(x, ok, torch.zeros(3, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="size"):
        cutout(x, ok, ok, -1)


def test_crop_flip_errors_name_the_argument():
    x = torch.zeros(2, 1, 4, 4)
    ok = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="offsets"):
        crop_flip(x, torch.tensor([0, 9]), ok, ok.bool(), 4)
    with pytest.raises(ValueError, match="ox"):
        crop_flip(x, ok, torch.zeros(3, dtype=torch.int64), ok.bool(), 4)
    with pytest.raises(ValueError, match="padding"):
        crop_flip(x, ok, ok, ok.bool(), -1)
    with pytest.raises(ValueError, match="x must be"):
        crop_flip(torch.zeros(4, 4), ok, ok, ok.bool(), 1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_device_split_batches_equal_dataset_normalized(dtype):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 4, 4), generator=g).to(torch.uint8)
    if dtype == torch.float32:
        images = images.float() / 255
    ds = Dataset(images, torch.arange(10) % 3, ["a", "b", "c"], (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "t")
    split = DeviceSplit(ds.images, ds.labels, ds.mean, ds.std, "cpu", channels_last=True)
    idx = torch.tensor([7, 2, 2, 0])
    x, y = split.batch(idx)
    assert torch.equal(x, ds.normalized(idx)) and torch.equal(y, ds.labels[idx])
    assert x.is_contiguous(memory_format=torch.channels_last)
    xa, _ = split.batch(idx, random_crop_flip, torch.Generator().manual_seed(1))
    ref = random_crop_flip(ds.images[idx], torch.Generator().manual_seed(1))
    assert torch.equal(xa, Dataset(ref, y, ds.classes, ds.mean, ds.std, "t").normalized())


def test_device_split_validates():
    with pytest.raises(ValueError, match="labels"):
        DeviceSplit(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64), [0.0], [1.0], "cpu")
    with pytest.raises(ValueError, match="mean and std"):
        DeviceSplit(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64), [0.0, 0.0], [1.0, 1.0], "cpu")
    with pytest.raises(ValueError, match="uint8 or float32"):
        DeviceSplit(
            torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.int64), [0.0], [1.0], "cpu"
        )

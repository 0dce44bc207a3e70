"""scikit-learn's bundled digits (1,797 8x8 images) split into train / val / test."""

from __future__ import annotations

import numpy as np
import torch

from .dataset import Dataset, _split_indices


def load_digits_splits(seed: int = 0, test_size: int = 360, val_size: int = 300) -> dict[str, Dataset]:
    """scikit-learn's bundled digits as {"train", "val", "test"} (1797 - test_size - val_size / val_size / test_size).

    images: float32 [N, 1, 8, 8], the 0..16 pixel values scaled to [0, 1]; labels 0..9; classes "0".."9".
    The splits are stratified and seeded; mean/std are the training split's pixel mean and std.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rest, test = _split_indices(labels.numpy(), test_size, seed, "test_size")
    train_in_pool, val_in_pool = _split_indices(labels.numpy()[rest], val_size, seed, "val_size")
    train, val = rest[train_in_pool], rest[val_in_pool]
    pixels = images[torch.from_numpy(train)].double()
    mean, std = (float(pixels.mean()),), (float(pixels.std()),)
    classes = [str(i) for i in range(10)]

    def part(idx: np.ndarray, source: np.ndarray | None = None) -> Dataset:
        t = torch.from_numpy(idx)
        return Dataset(images[t].contiguous(), labels[t].contiguous(), classes, mean, std, "digits", source)

    # the pool of the validation draw: the images outside the test split
    return {"train": part(train, train_in_pool), "val": part(val, val_in_pool), "test": part(test)}

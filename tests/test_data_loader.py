"""Choosing and running the data path: command-line split sizes, the in-memory and streaming loaders."""

from __future__ import annotations

import argparse

import pytest

from dcsim import cli


def _args(**kw) -> argparse.Namespace:
    base = {"dataset": "digits", "data_root": None, "val_size": None, "seed": 0}
    return argparse.Namespace(**(base | kw))


def test_val_size_is_honoured_for_digits():
    default = cli.load_splits(_args())
    assert len(default["val"]) == 300
    splits = cli.load_splits(_args(val_size=301))
    assert len(splits["val"]) == 301 and len(splits["test"]) == 360
    assert len(splits["train"]) + 301 + 360 == 1797
    with pytest.raises(ValueError, match="val_size"):
        cli.load_splits(_args(val_size=0))

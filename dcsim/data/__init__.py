"""Data sets, in memory or read from disk batch by batch: scikit-learn's digits, CIFAR-10 and ImageNet-style class folders.

Modules: ``dataset`` (the in-memory :class:`Dataset`, its batches, normalizations, the seeded validation split),
``digits``, ``cifar10`` (with ``cifar_batches``: the restricted unpickler), ``archives`` (safe
extraction), ``scan`` (listing class folders), ``decode`` (image files to pixels), ``cache`` (the
decoded-image cache), ``folders`` (class folders in memory), ``augment`` (crops, flips and cutout of a batch),
``disk`` (class folders decoded batch by batch in DataLoader workers), ``heap`` (bounded resident memory
for runs read from disk), ``sources`` (choosing either path).

The in-memory loaders return :class:`Dataset` objects holding the whole split (``open_splits`` with
``loader="disk"`` returns :class:`FolderSplit` file lists instead, decoded batch by batch):

- images: torch.uint8 [N, C, H, W] (pixel values 0..255) for image files, or torch.float32
  [N, 1, 8, 8] with values in [0, 1] for the digits;
- labels: torch.int64 [N], indices into ``classes``;
- mean / std: the per-channel normalization to apply, in units of [0, 1] pixel intensity.

Layouts read (nothing is ever downloaded):

- scikit-learn's bundled ``load_digits`` (1,797 8x8 images), split by :func:`load_digits_splits`;
- CIFAR-10 (:func:`load_cifar10`): the torchvision/official python batches (``cifar-10-batches-py/``),
  ``train/<class>/*`` and ``test/<class>/*`` image folders, or a ``.tar.gz`` / ``.tgz`` / ``.tar``
  archive of either, extracted once (safely) by :func:`extract_archive`;
- ImageNet-style ``<root>/<class>/<image>`` folders (:func:`load_image_folder`,
  :func:`load_imagenet_style` for ``root/train`` and ``root/val``).

The validation split is always drawn from the training images, seeded, disjoint from the rest of
train, and stratified by class (scikit-learn's ``train_test_split``) whenever every class can appear
on both sides; otherwise (tiny data) it is a uniformly random draw.

Decoded-image cache: after decoding an image folder, the uint8 pixels are saved to
``<folder>/.dcsim-cache/images.npy`` with ``cache.json`` written last; the json stores a key over
every file's relative path, size and modification time and the resize/crop settings, so a later
load of the same unchanged folder reads one ``.npy`` file instead of decoding every image (CIFAR-10:
about 1 s instead of 15-20 s). A read-only folder (no write permission bit) is not cached; a failed
write only warns. Pass ``cache=False`` to neither read nor write the cache.
"""

from __future__ import annotations

from .archives import EXTRACTED_MARKER, extract_archive
from .augment import augment_cifar
from .cache import CACHE_DIR
from .cifar10 import load_cifar10
from .dataset import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Dataset, batches, outside_held_out
from .digits import load_digits_splits
from .disk import FolderSplit, split_batches
from .folders import load_image_folder, load_imagenet_style
from .heap import return_large_buffers
from .scan import IMAGE_EXTENSIONS
from .sources import DISK_ABOVE_BYTES, LOADERS, open_splits

_POOL_MIN_FILES = 4096
"""Folders with fewer images are decoded in this process: for them the pool's start-up and the transfer
of results cost more than the second core saves."""
_POOL_CHUNK = 1024

__all__ = [
    "CACHE_DIR",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DISK_ABOVE_BYTES",
    "EXTRACTED_MARKER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "LOADERS",
    "Dataset",
    "FolderSplit",
    "augment_cifar",
    "batches",
    "extract_archive",
    "load_cifar10",
    "load_digits_splits",
    "load_image_folder",
    "load_imagenet_style",
    "open_splits",
    "outside_held_out",
    "return_large_buffers",
    "split_batches",
]

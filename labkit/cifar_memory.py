"""CIFAR-10 held in memory as one uint8 tensor and augmented a whole batch at a time (issue 11, item 4).

The 50,000 training images are 150 MB as ``uint8 [N, 32, 32, 3]``. :class:`CIFAR10InMemory` decodes the JPEG
copy once (with PIL, exactly as :func:`labkit.data.load_rgb` does per image) and caches the array on disk, so
later runs read one file instead of 50,000 JPEGs. :func:`augment_batch` then gives the standard CIFAR-10
training pipeline -- ``RandomCrop(32, padding=4)`` (zero padding), ``RandomHorizontalFlip()``, ``ToTensor()``,
``Normalize(CIFAR10_MEAN, CIFAR10_STD)`` -- for a whole batch in a few tensor operations.

Same batches as the per-image pipeline, bit for bit
    torchvision's transforms draw, per image, ``i = randint(0, 9)``, ``j = randint(0, 9)`` (crop corner) and
    ``rand() < 0.5`` (flip) from torch's generator, which :class:`labkit.data.SeededSamples` seeds with the
    image's own seed. :func:`crop_flip_draws` makes the same three draws from a generator seeded the same way,
    and the batch operations (pad with zeros, gather the crop window, mirror the columns, ``/255``, subtract
    the mean, divide by the standard deviation) are the per-image operations applied elementwise. So the fast
    loader yields exactly the tensors the per-image loader yields for the same ``(seed, epoch)``.

Cache
    ``$LABKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/labkit``, else ``~/.cache/labkit`` -- never the data root
    (it may be read-only or shared) and never the repository. A cache file is named by a SHA-256 of the folder,
    every image's relative path, size, modification time and label, and the PIL/libjpeg versions that decode
    it: a changed file or another decoder makes a new cache file. An unwritable cache only costs the decoding
    time of each call (one warning says so).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, features
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from labkit.errors import DataLayoutError

__all__ = [
    "CACHE_ENV",
    "CIFAR10InMemory",
    "NotCifarSized",
    "WholeBatchLoader",
    "augment_batch",
    "batch_source",
    "cache_dir",
    "crop_flip_draws",
    "decode_images",
    "fits_in_memory",
    "normalize_batch",
    "standard_pipeline",
]

CACHE_ENV = "LABKIT_CACHE"
IMAGE_SHAPE = (32, 32, 3)
PADDING = 4
_CACHE_FORMAT = "labkit-cifar10-uint8/1"


# ------------------------------------------------------------------------------------------------ decoding
def cache_dir() -> Path:
    """Where decoded data sets are cached: ``$LABKIT_CACHE``, ``$XDG_CACHE_HOME/labkit`` or ``~/.cache/labkit``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value:
        return Path(value).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache").absolute() / "labkit"


class NotCifarSized(ValueError):
    """An image that is not 32x32: the folder cannot be held as one CIFAR-10 array (it is read per image)."""


def decode_images(paths: Sequence) -> np.ndarray:
    """The images at ``paths`` as one ``uint8 [N, 32, 32, 3]`` array, each decoded like ``load_rgb`` (RGB)."""
    from labkit.data import load_rgb  # labkit.data imports this module

    images = np.empty((len(paths), *IMAGE_SHAPE), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            pixels = np.asarray(load_rgb(path))
        except OSError as error:  # PIL's UnidentifiedImageError, a truncated file, ...
            raise DataLayoutError(f"{path} is not a readable image ({error}); replace or remove the file.") from error
        if pixels.shape != IMAGE_SHAPE:
            raise NotCifarSized(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels, not 32x32 like CIFAR-10")
        images[i] = pixels
    return images


def fits_in_memory(nbytes: int, headroom: float = 4.0) -> bool:
    """Whether ``headroom * nbytes`` is below the memory the OS reports available (True when it cannot tell)."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            pass
    return available is None or headroom * nbytes <= available


def _fingerprint(folder: Path, samples: Sequence[tuple[str, int]]) -> str:
    """SHA-256 of the folder, every sample's relative path, size, mtime and label, and the JPEG decoder."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\0{folder}\0{Image.__version__}\0{features.version('jpg')}\0".encode())
    for path, target in samples:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{target}\n".encode())
    return digest.hexdigest()


def _read_cache(path: Path, count: int) -> np.ndarray | None:
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return images if images.dtype == np.uint8 and images.shape == (count, *IMAGE_SHAPE) else None


def _write_cache(path: Path, images: np.ndarray) -> None:
    """Write atomically (a temporary file renamed into place), so concurrent runs never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, images, allow_pickle=False)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    except OSError as error:
        warnings.warn(f"could not cache the decoded CIFAR-10 images in {path.parent} ({error}); each run decodes "
                      f"them again. Set {CACHE_ENV} to a writable folder to cache them.", stacklevel=3)


def load_decoded(folder: Path, samples: Sequence[tuple[str, int]], cache: bool = True) -> np.ndarray:
    """The decoded images of ``samples`` (ImageFolder ``(path, label)`` pairs), from the cache when it has them."""
    if not cache:
        return decode_images([path for path, _ in samples])
    path = cache_dir() / f"cifar10-{folder.name}-{_fingerprint(folder, samples)[:20]}.npy"
    images = _read_cache(path, len(samples)) if path.is_file() else None
    if images is None:
        images = decode_images([p for p, _ in samples])
        _write_cache(path, images)
    return images


# ---------------------------------------------------------------------------------------------- the pipeline
def standard_pipeline(transform: Callable | None) -> str | None:
    """``"train"`` or ``"test"`` when ``transform`` is :func:`labkit.data.cifar10_transforms` of that split
    (checked by structure and settings, so a user's own copy counts), else None."""
    from labkit.data import CIFAR10_MEAN, CIFAR10_STD

    steps = getattr(transform, "transforms", None)
    if type(transform) is not transforms.Compose or not isinstance(steps, list):
        return None
    tail = steps[-2:]
    if [type(t) for t in tail] != [transforms.ToTensor, transforms.Normalize] or tail[1].inplace or \
            tuple(tail[1].mean) != CIFAR10_MEAN or tuple(tail[1].std) != CIFAR10_STD:
        return None
    if len(steps) == 2:
        return "test"
    if len(steps) != 4 or [type(t) for t in steps[:2]] != [transforms.RandomCrop, transforms.RandomHorizontalFlip]:
        return None
    crop, flip = steps[:2]
    if crop.size != (32, 32) or crop.padding != PADDING or crop.pad_if_needed or crop.fill != 0 or \
            crop.padding_mode != "constant" or flip.p != 0.5:
        return None
    return "train"


def crop_flip_draws(seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) per image: the draws ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``
    make from torch's generator seeded with the image's seed (top and left in 0..8, flip a bool)."""
    generator = torch.Generator()
    span = 2 * PADDING + 1
    tops, lefts, flips = [], [], []
    for seed in seeds:
        generator.manual_seed(seed)
        tops.append(int(torch.randint(0, span, (1,), generator=generator)))
        lefts.append(int(torch.randint(0, span, (1,), generator=generator)))
        flips.append(bool(torch.rand(1, generator=generator) < 0.5))
    return torch.tensor(tops), torch.tensor(lefts), torch.tensor(flips)


def crop_flip(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``uint8 [B, H, W, C]`` images by 4, cut the HxW window at (top, left), mirror it where ``flips``:
    ``uint8 [B, C, H, W]`` (channels first, as ``ToTensor`` lays them out)."""
    count, height, width, channels = images.shape
    padded = images.new_zeros((count, height + 2 * PADDING, width + 2 * PADDING, channels))
    padded[:, PADDING:PADDING + height, PADDING:PADDING + width] = images
    windows = padded.unfold(1, height, 1).unfold(2, width, 1)  # [B, 9, 9, C, H, W]: every window, no copy
    device = images.device
    out = windows[torch.arange(count, device=device), tops.to(device), lefts.to(device)]  # [B, C, H, W]
    flips = flips.to(device)
    out[flips] = out[flips].flip(-1)
    return out


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """``ToTensor`` + ``Normalize(CIFAR10_MEAN, CIFAR10_STD)`` of ``uint8 [B, 3, H, W]`` images, batched:
    contiguous ``float32 [B, 3, H, W]``, the same operations in the same order as per image."""
    from labkit.data import CIFAR10_MEAN, CIFAR10_STD

    batch = images.contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(CIFAR10_MEAN, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(CIFAR10_STD, dtype=torch.float32).view(1, -1, 1, 1)
    return batch.sub_(mean).div_(std)


def augment_batch(images: torch.Tensor, seeds: Sequence[int] | None) -> torch.Tensor:
    """The standard CIFAR-10 pipeline of ``uint8 [B, 32, 32, 3]`` images as one batch: with ``seeds`` (one per
    image) the training pipeline with those images' random draws, without them the test pipeline."""
    if seeds is None:
        return normalize_batch(images.permute(0, 3, 1, 2))
    return normalize_batch(crop_flip(images, *crop_flip_draws(seeds)))


# ------------------------------------------------------------------------------------------------- data set
class CIFAR10InMemory(Dataset):
    """A CIFAR-10 ImageFolder split decoded into ``images`` (``uint8 [N, 32, 32, 3]``), labels in ``targets``.

    Item ``i`` is ``transform(PIL image i)``, the same as the ImageFolder item (the JPEG is only decoded once).
    ``classes``, ``class_to_idx``, ``samples``, ``targets``, ``transform`` and ``root`` are those of the folder
    data set. :func:`labkit.data.make_loader` builds whole batches with :meth:`batch` when ``transform`` is the
    standard pipeline (:func:`standard_pipeline`).
    """

    def __init__(self, folder_dataset, cache: bool = True):
        self.root = folder_dataset.root
        self.classes = list(folder_dataset.classes)
        self.class_to_idx = dict(folder_dataset.class_to_idx)
        self.samples = list(folder_dataset.samples)
        self.targets = [target for _, target in self.samples]
        self.transform = folder_dataset.transform
        self.images = torch.from_numpy(load_decoded(Path(self.root), self.samples, cache))
        self.labels = torch.tensor(self.targets, dtype=torch.int64)

    @classmethod
    def from_arrays(cls, images, targets: Sequence[int], transform: Callable | None = None,
                    classes: Sequence[str] | None = None) -> "CIFAR10InMemory":
        """A data set of ``uint8 [N, 32, 32, 3]`` ``images`` (a tensor or array) and their labels, without files
        (synthetic data, benchmarks). ``transform`` defaults to the training pipeline, ``classes`` to CIFAR-10's."""
        from labkit.data import CIFAR10_CLASSES, cifar10_transforms

        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images.dtype} {tuple(images.shape)}.")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets.")
        dataset = cls.__new__(cls)
        dataset.root = "<arrays>"
        dataset.classes = list(CIFAR10_CLASSES if classes is None else classes)
        dataset.class_to_idx = {name: i for i, name in enumerate(dataset.classes)}
        dataset.targets = [int(t) for t in targets]
        dataset.samples = [(f"<arrays>/{i}", t) for i, t in enumerate(dataset.targets)]
        dataset.transform = cifar10_transforms(train=True) if transform is None else transform
        dataset.images = images.cpu().contiguous()
        dataset.labels = torch.tensor(dataset.targets, dtype=torch.int64)
        return dataset

    @property
    def imgs(self) -> list:
        """ImageFolder's other name for ``samples``."""
        return self.samples

    @property
    def num_classes(self) -> int:
        """Size of the label space (10)."""
        return len(self.classes)

    @property
    def classes_present(self) -> list[int]:
        """Sorted labels that occur in this split."""
        return sorted(set(self.targets))

    @property
    def pipeline(self) -> str | None:
        """``"train"``/``"test"`` when ``transform`` is that standard pipeline (batchable), else None."""
        return standard_pipeline(self.transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy())
        return (image if self.transform is None else self.transform(image)), self.targets[index]

    def batch(self, indices: torch.Tensor, seeds: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of ``indices`` through the standard pipeline; ``seeds`` as in :func:`augment_batch`."""
        return augment_batch(self.images[indices], seeds if self.pipeline == "train" else None), self.labels[indices]

    def __repr__(self) -> str:
        return f"CIFAR10InMemory({len(self)} images of {self.root}, pipeline={self.pipeline})"


class ArrayBatches:
    """Whole batches of ``uint8 [N, 32, 32, 3]`` images already in memory (torchvision's CIFAR10 ``data``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pipeline: str):
        self.images, self.labels, self.pipeline = images, labels, pipeline

    def batch(self, indices: torch.Tensor, seeds: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of ``indices`` through the standard pipeline; ``seeds`` as in :func:`augment_batch`."""
        return augment_batch(self.images[indices], seeds if self.pipeline == "train" else None), self.labels[indices]


def batch_source(dataset) -> CIFAR10InMemory | ArrayBatches | None:
    """What builds whole batches of ``dataset``: a :class:`CIFAR10InMemory`, or torchvision's CIFAR10 (which
    holds its uint8 array already), with the standard pipeline; None for any other data set or transform."""
    if isinstance(dataset, CIFAR10InMemory):
        return dataset if dataset.pipeline is not None else None
    if isinstance(dataset, datasets.CIFAR10) and dataset.target_transform is None:
        pipeline = standard_pipeline(dataset.transform)
        data = getattr(dataset, "data", None)
        if pipeline and isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == IMAGE_SHAPE:
            return ArrayBatches(torch.from_numpy(data), torch.as_tensor(dataset.targets, dtype=torch.int64), pipeline)
    return None


class WholeBatchLoader:
    """The batches of :func:`labkit.data.make_loader` for an in-memory data set, built whole in this process.

    The same ``(index, seed)`` order from the same :class:`~labkit.data.EpochSampler` (``sampler.set_epoch``,
    ``start_batch``, shards) and the same tensors as the per-image DataLoader, without worker processes: a
    batch costs one gather, crop and normalisation of its images instead of decoding and augmenting them one
    by one. Yields ``(images, labels)``, plus the data set ``indices`` (int64) when ``with_index``.
    """

    def __init__(self, dataset, source, sampler, batch_size: int, drop_last: bool, with_index: bool = False,
                 pin_memory: bool = False):
        self.dataset, self.source, self.sampler = dataset, source, sampler
        self.batch_size, self.drop_last, self.with_index = batch_size, drop_last, with_index
        self.pin_memory = pin_memory and torch.cuda.is_available()  # as DataLoader: no pinning without CUDA

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _assemble(self, pairs: list) -> tuple:
        indices = torch.tensor([index for index, _ in pairs], dtype=torch.int64)
        # One intra-op thread: a batch is a few hundred kilobytes, and on a busy machine waiting for a second
        # thread costs more than the work (measured 13-15 ms a batch on 1 thread, 24-160 ms on 2, load 11).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            images, labels = self.source.batch(indices, [seed for _, seed in pairs])
        finally:
            torch.set_num_threads(threads)
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return (images, labels, indices) if self.with_index else (images, labels)

    def __iter__(self):
        pairs = []
        for pair in self.sampler:
            pairs.append(pair)
            if len(pairs) == self.batch_size:
                yield self._assemble(pairs)
                pairs = []
        if pairs and not self.drop_last:
            yield self._assemble(pairs)

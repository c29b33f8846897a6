"""Data sets and loaders: CIFAR-10, ImageNet-style folders (Imagenette, ImageNet-1K) and reproducible loaders.

Where data is read from
    Every function that takes ``root`` reads from the data root, ``labkit.config.data_root()`` (``$LABKIT_DATA``)
    by default. The layout is described in ``data/README.md``::

        cifar10/{train,test}/<class>/<image>       (or torchvision's cifar10/cifar-10-batches-py/)
        imagenette/{train,val}/<wnid>/<image>
        imagenet-val-sample/<wnid>/<image>
        imagenet_classes.txt                       line i = "<wnid>\\t<name>" of ImageNet-1K class i

    CIFAR-10 falls back to ``torchvision.datasets.CIFAR10`` (which downloads it) when no ImageFolder copy is
    there. ImageNet is any ImageFolder tree the user points at; nothing ImageNet-related is ever downloaded.
    A missing or empty data folder raises one :class:`~labkit.errors.DataNotFoundError` that names the folder,
    the layout expected there and how to get the data.

Labels
    CIFAR-10 labels are the canonical order (airplane=0 ... truck=9) in both layouts. Folders named by
    ImageNet wnid can be labelled two ways: ``labels="local"`` numbers the folders 0..k-1 (plain ImageFolder),
    ``labels="1k"`` gives each image the ImageNet-1K index of its wnid (what a pretrained 1000-class model
    predicts), read from ``imagenet_classes.txt``.

Loaders
    :func:`make_loader` gives batches that depend only on ``(seed, epoch)``: the sample order comes from a
    generator seeded with ``seed + epoch``, and every sample's random augmentation is drawn from its own seed
    derived from ``(seed, epoch, index)``. So the batches do not depend on the number of worker processes,
    and a run resumed mid-epoch (``start_batch=k``) sees exactly the batches ``k, k+1, ...`` that an
    uninterrupted run would have seen, augmentations included. CIFAR-10 is held in memory as one uint8 array
    (:mod:`labkit.cifar_memory`), and its loader builds each batch as a whole with tensor operations: the same
    batches, bit for bit, without decoding or augmenting images one by one.
"""
from __future__ import annotations

import functools
import os
import pickle
import random
import re
import tarfile
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets, transforms

from labkit.cifar_memory import CIFAR10InMemory, NotCifarSized, WholeBatchLoader, batch_source, fits_in_memory
from labkit.config import DATA_ENV, data_root
from labkit.errors import DataLayoutError, DataNotFoundError

__all__ = [
    "CIFAR10InMemory",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "NORMALIZATIONS",
    "DataLayoutError",
    "EpochSampler",
    "ImageFolderRGB",
    "ImageNetClassIndex",
    "ImageNetSubset",
    "SeededSamples",
    "TorchvisionCIFAR10",
    "cifar10",
    "cifar10_transforms",
    "default_workers",
    "imagenet_1k_labelled",
    "imagenet_class_index",
    "imagenet_folder",
    "imagenet_transforms",
    "imagenet_val_sample",
    "imagenette",
    "load_rgb",
    "make_loader",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Per-channel mean and standard deviation of the 50,000 CIFAR-10 training images (pixel values in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

NORMALIZATIONS = ("imagenet", "efficientnet")
IMAGENET_CLASSES_FILE = "imagenet_classes.txt"

_WNID = re.compile(r"^n\d{8}$")
_MAX_REASON = 300  # characters of an underlying error shown in a DataNotFoundError

_CIFAR10_HOW = (
    "On a machine with internet, cifar10(...) downloads it through torchvision into {folder} on first use "
    "(download=True, the default when no ImageFolder copy exists); otherwise copy a CIFAR-10 folder there, or set "
    f"{DATA_ENV} to a data root that holds cifar10/ (data root now: {{root}})."
)
_IMAGENET_HOW = (
    "ImageNet-1K (ILSVRC2012) comes from https://image-net.org (free account, non-commercial terms); its "
    "train/ and val/ must be sorted into one folder per wnid (torchvision.datasets.ImageNet, or the usual "
    "valprep.sh, does that for val/). Any other ImageFolder tree works too."
)
_IMAGENETTE_HOW = (
    "On a machine with internet, download imagenette2 from https://github.com/fastai/imagenette "
    "(imagenette2.tgz), extract it and move/rename its train/ and val/ to {folder}; or set "
    f"{DATA_ENV} to a data root that holds imagenette/ (data root now: {{root}})."
)
_VAL_SAMPLE_HOW = (
    "imagenet-val-sample/ is a small sample of the ImageNet validation set kept next to the other data sets; "
    f"set {DATA_ENV} to a data root that holds it (data root now: {{root}}), or evaluate on a full ImageNet val/ "
    "folder with imagenet_1k_labelled('<imagenet>/val')."
)
_CLASSES_FILE_HOW = (
    "It lists the 1000 ImageNet-1K wnids in index order, one per line, '<wnid><TAB><name>' (the "
    "LOC_synset_mapping.txt of the ImageNet Kaggle download, '<wnid> <name>', is accepted as it is). Put it in "
    f"the data root, or set {DATA_ENV} to a data root that holds it (data root now: {{root}})."
)


# ------------------------------------------------------------------------------------------------ helpers
def _resolve_root(root) -> Path:
    """``root`` as an absolute path, or the lab's data root when ``root`` is None."""
    return data_root() if root is None else Path(os.fspath(root)).expanduser().absolute()


def _one_line(error: BaseException, with_type: bool = True) -> str:
    """``"Type: message"`` (or just the message) of an exception on one line, at most a few hundred characters."""
    text = " ".join((f"{type(error).__name__}: {error}" if with_type else str(error)).split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _check_choice(name: str, value, allowed: Sequence) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; use one of {', '.join(map(repr, allowed))}.")


def load_rgb(path) -> Image.Image:
    """Open an image file as 3-channel RGB (grayscale, palette, CMYK and RGBA files are converted)."""
    with open(path, "rb") as file:
        image = Image.open(file)
        return image.convert("RGB")


# -------------------------------------------------------------------------------------------- image folders
class _LabelInfo:
    """``num_classes`` and ``classes_present`` for a data set with ``classes`` and ``targets``."""

    @property
    def num_classes(self) -> int:
        """Size of the label space (the number of outputs a classifier for these labels needs)."""
        return len(self.classes)

    @property
    def classes_present(self) -> list[int]:
        """Sorted labels that occur in this data set."""
        return sorted({int(target) for target in self.targets})


class ImageFolderRGB(_LabelInfo, datasets.ImageFolder):
    """``torchvision.datasets.ImageFolder`` that converts every image to RGB and ignores hidden folders.

    Labels are the sorted class folders numbered 0..k-1. ``num_classes`` is the size of the label space and
    ``classes_present`` the labels that have images in this folder (here: all of them).
    """

    def __init__(self, path, transform: Callable | None = None):
        super().__init__(os.fspath(path), transform=transform, loader=load_rgb)

    def find_classes(self, directory):
        """Class folders of ``directory``, sorted, hidden ones (``.ipynb_checkpoints``, ...) left out."""
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError("it has no class sub-folders")
        return classes, {name: i for i, name in enumerate(classes)}


class TorchvisionCIFAR10(_LabelInfo, datasets.CIFAR10):
    """``torchvision.datasets.CIFAR10`` (``cifar-10-batches-py``) with ``num_classes``/``classes_present``."""


class ImageNetClassIndex(NamedTuple):
    """ImageNet-1K class list: ``wnid_to_index`` (wnid -> class index) and ``names`` (index -> name)."""

    wnid_to_index: dict
    names: list

    @property
    def wnids(self) -> list[str]:
        """The wnids in class-index order."""
        return list(self.wnid_to_index)


class ImageNetSubset(ImageFolderRGB):
    """Folders named by ImageNet wnid, labelled with ImageNet-1K class indices (not 0..k-1).

    Any subset of the 1000 classes may be present (Imagenette's 10, the 725 of the val sample, all 1000).
    ``classes``/``class_to_idx`` describe the whole ImageNet-1K label space (so ``classes[target]`` is the
    wnid of a target and ``class_names[target]`` its name), ``num_classes`` is 1000, ``classes_present`` the
    sorted indices that have images here and ``wnids_present`` their folders.
    """

    def __init__(
        self,
        path,
        class_index: ImageNetClassIndex | Callable[[], ImageNetClassIndex],
        transform: Callable | None = None,
    ):
        self.class_index = class_index  # a callable is called once the folder is known to hold class folders
        super().__init__(path, transform=transform)
        self.wnids_present = self.classes
        self.classes = self.class_index.wnids
        self.class_to_idx = dict(self.class_index.wnid_to_index)

    def find_classes(self, directory):
        """The wnid folders of ``directory``, each mapped to its ImageNet-1K index."""
        wnids, _ = super().find_classes(directory)
        if callable(self.class_index):
            self.class_index = self.class_index()
        unknown = [w for w in wnids if w not in self.class_index.wnid_to_index]
        if unknown:
            raise DataLayoutError(
                f"{directory!s}: {len(unknown)} of its {len(wnids)} class folders are not ImageNet-1K wnids "
                f"(e.g. {unknown[:3]}); labels='1k' needs folders named like n01440764. Use labels='local' "
                "(0..k-1) for other folder names."
            )
        return wnids, {w: self.class_index.wnid_to_index[w] for w in wnids}

    @property
    def num_classes(self) -> int:
        """1000 for ImageNet-1K (the length of the class list), whatever subset of classes is present."""
        return len(self.class_index.names)

    @property
    def class_names(self) -> list[str]:
        """Human-readable class names in ImageNet-1K index order."""
        return self.class_index.names


def _open_folder(make: Callable[[], Dataset], path: Path, what: str, layout: str, how: str) -> Dataset:
    """Build a folder data set with ``make()``; a missing or empty folder becomes one DataNotFoundError."""
    if not path.exists():
        reason = "the folder does not exist"
    elif not path.is_dir():
        reason = "it is not a folder"
    else:
        try:
            return make()
        except DataNotFoundError:  # another missing file (the ImageNet class list), already explained
            raise
        except FileNotFoundError as error:
            reason = _one_line(error, with_type=False)
    raise DataNotFoundError(f"{what} not found at {path}: {reason}. Expected layout: {layout}. {how}")


# ------------------------------------------------------------------------------------------------ CIFAR-10
def cifar10_transforms(train: bool) -> Callable:
    """The standard CIFAR-10 pipeline: train = RandomCrop(32, padding=4) + flip + ToTensor + Normalize;
    test = ToTensor + Normalize (with ``CIFAR10_MEAN``/``CIFAR10_STD``)."""
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def _cifar10_layouts(folder: Path, split: str) -> str:
    """Both CIFAR-10 layouts cifar10() accepts, spelled out for error messages."""
    return (
        f"either an ImageFolder copy {folder / split}/<class>/*.jpg with the 10 class folders "
        f"{', '.join(CIFAR10_CLASSES)}, or torchvision's copy {folder / 'cifar-10-batches-py'}/"
    )


def _check_cifar10_classes(classes: Sequence[str], where: Path) -> None:
    """Raise DataLayoutError unless ``classes`` is the canonical CIFAR-10 class list in label order."""
    if list(classes) != list(CIFAR10_CLASSES):
        raise DataLayoutError(
            f"{where}: CIFAR-10 classes {list(classes)} are not the canonical {list(CIFAR10_CLASSES)}; the labels "
            "would not be airplane=0 ... truck=9. Fix the class folder names."
        )


def _cifar10_image_folder(folder: Path, split: str, transform: Callable, root: Path) -> Dataset:
    """The ImageFolder copy ``<root>/cifar10/<split>/<class>/*.jpg``."""
    path = folder / split
    how = _CIFAR10_HOW.format(folder=folder, root=root)
    dataset = _open_folder(
        lambda: ImageFolderRGB(path, transform), path, f"CIFAR-10 {split} split", _cifar10_layouts(folder, split), how
    )
    _check_cifar10_classes(dataset.classes, path)
    return dataset


def _cifar10_torchvision(folder: Path, split: str, download: bool, transform: Callable, root: Path) -> Dataset:
    """torchvision's CIFAR-10 in ``<root>/cifar10/cifar-10-batches-py``, downloaded there when ``download``."""
    try:
        dataset = TorchvisionCIFAR10(os.fspath(folder), train=split == "train", transform=transform, download=download)
    except (OSError, RuntimeError, EOFError, tarfile.TarError, pickle.UnpicklingError) as error:
        tried = "the download failed" if download else "download=False, so nothing was downloaded"
        raise DataNotFoundError(
            f"CIFAR-10 {split} split not found under {folder} and {tried} ({_one_line(error)}). "
            f"Expected: {_cifar10_layouts(folder, split)}. {_CIFAR10_HOW.format(folder=folder, root=root)}"
        ) from error
    _check_cifar10_classes(dataset.classes, folder / "cifar-10-batches-py")
    return dataset


def cifar10(split: str = "train", root=None, download: bool | None = None, transform: Callable | None = None,
            in_memory: bool | None = None):
    """CIFAR-10 ``split`` ("train" | "test") with labels airplane=0 ... truck=9.

    Reads the ImageFolder copy ``<root>/cifar10/<split>/<class>/*.jpg`` when that folder exists (``download``
    is then ignored); otherwise ``torchvision.datasets.CIFAR10(<root>/cifar10, download=download)``, which
    downloads the data set on first use (``download`` defaults to True). ``root`` defaults to the data root
    (``$LABKIT_DATA``); ``transform`` defaults to :func:`cifar10_transforms` for the split. Raises
    DataNotFoundError when neither copy is there and nothing could be downloaded.

    ``in_memory``: the ImageFolder copy is decoded once into one uint8 array (:class:`CIFAR10InMemory`, cached
    on disk, see :mod:`labkit.cifar_memory`) -- by default (None) whenever it fits in memory, always with True,
    never with False (a plain :class:`ImageFolderRGB` that decodes every image when it is loaded). Items are
    the same either way; :func:`make_loader` builds whole batches of an in-memory copy (and of torchvision's
    copy, which is in memory already) with tensor operations.
    """
    _check_choice("split", split, ("train", "test"))
    root = _resolve_root(root)
    folder = root / "cifar10"
    transform = cifar10_transforms(train=split == "train") if transform is None else transform
    if (folder / split).exists():
        dataset = _cifar10_image_folder(folder, split, transform, root)
        if in_memory is False or (in_memory is None and not fits_in_memory(len(dataset) * 32 * 32 * 3)):
            return dataset
        try:
            return CIFAR10InMemory(dataset)
        except NotCifarSized as error:
            if in_memory:
                raise DataLayoutError(f"{error}: in_memory=True holds 32x32 images only; use in_memory=False.") \
                    from None
            warnings.warn(f"{error}; CIFAR-10 is read image by image (in_memory=False).", stacklevel=2)
            return dataset
    return _cifar10_torchvision(folder, split, True if download is None else download, transform, root)


# ------------------------------------------------------------------------------------------------ ImageNet
def _normalization(name: str) -> dict:
    """Resize/crop/mean/std of a named input pipeline ("imagenet": torchvision weights, "efficientnet": 0.5)."""
    _check_choice("normalization", name, NORMALIZATIONS)
    from labkit.models.imagenet import EFFICIENTNET_LITE0_PREPROCESSING, TORCHVISION_PREPROCESSING

    return TORCHVISION_PREPROCESSING if name == "imagenet" else EFFICIENTNET_LITE0_PREPROCESSING


def imagenet_transforms(train: bool, normalization: str = "imagenet", image_size: int = 224) -> Callable:
    """ImageNet pipeline: train = RandomResizedCrop + flip; eval = Resize(256) + CenterCrop(224) (scaled with
    ``image_size``); then ToTensor + Normalize with the ``normalization``'s mean/std."""
    pre = _normalization(normalization)
    if train:
        geometry = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        resize = round(image_size * pre["resize"] / pre["crop"])
        geometry = [transforms.Resize(resize), transforms.CenterCrop(image_size)]
    return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"])])


def _parse_class_line(line: str, number: int, path: Path) -> tuple[str, str]:
    """``(wnid, name)`` of one class-list line, tab-separated (or separated by the first space)."""
    wnid, sep, name = line.partition("\t")
    if not sep:
        wnid, _, name = line.partition(" ")
    wnid, name = wnid.strip(), name.strip()
    if not _WNID.match(wnid):
        raise DataLayoutError(f"{path}, line {number}: {wnid!r} is not a wnid like n01440764 (line: {line!r}).")
    return wnid, name


def imagenet_class_index(root=None) -> ImageNetClassIndex:
    """ImageNet-1K class list from ``<root>/imagenet_classes.txt``: ``(wnid_to_index, names)``.

    Line i of the file is ``"<wnid>\\t<name>"`` of class index i. ``root`` is a data root (default: the lab's)
    or the path of the file itself.
    """
    base = _resolve_root(root)
    path = base if base.is_file() else base / IMAGENET_CLASSES_FILE
    if not path.is_file():
        raise DataNotFoundError(
            f"ImageNet class list not found at {path}. {_CLASSES_FILE_HOW.format(root=_resolve_root(root))}"
        )
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [_parse_class_line(line, i + 1, path) for i, line in enumerate(lines)]
    wnid_to_index = {wnid: i for i, (wnid, _) in enumerate(pairs)}
    if len(wnid_to_index) != len(pairs):
        raise DataLayoutError(f"{path}: some wnids are listed twice; each line must be a different class.")
    return ImageNetClassIndex(wnid_to_index, [name for _, name in pairs])


def imagenet_folder(
    path,
    train: bool,
    normalization: str = "imagenet",
    image_size: int = 224,
    labels: str = "local",
    transform: Callable | None = None,
    class_index: ImageNetClassIndex | None = None,
    root=None,
) -> ImageFolderRGB:
    """Any ImageFolder tree ``path/<class>/<image>`` with the ImageNet pipeline (:func:`imagenet_transforms`).

    ``labels="local"`` numbers the sorted class folders 0..k-1 (plain ImageFolder; for full ImageNet that is
    the ImageNet-1K order). ``labels="1k"`` requires wnid folders and labels each image with the ImageNet-1K
    index of its wnid (:class:`ImageNetSubset`), from ``class_index`` or ``imagenet_class_index(root)``.
    Images are converted to RGB. ``transform`` replaces the standard pipeline.
    """
    return _image_folder(
        path, train, normalization, image_size, labels, transform, class_index, root,
        what="ImageNet-style image folder", how=_IMAGENET_HOW,
    )  # fmt: skip


def _image_folder(path, train, normalization, image_size, labels, transform, class_index, root, *, what, how):
    """:func:`imagenet_folder` with the data set's name and how-to-get-it text for error messages."""
    _check_choice("labels", labels, ("local", "1k"))
    path = Path(os.fspath(path)).expanduser().absolute()
    transform = imagenet_transforms(train, normalization, image_size) if transform is None else transform
    if labels == "1k":
        index = functools.partial(imagenet_class_index, root) if class_index is None else class_index
        make = functools.partial(ImageNetSubset, path, index, transform)
    else:
        make = functools.partial(ImageFolderRGB, path, transform)
    layout = f"{path}/<wnid>/<image>.JPEG (folders named by ImageNet wnid, e.g. n01440764)" if labels == "1k" else (
        f"{path}/<class>/<image>.JPEG (one folder per class)"
    )
    return _open_folder(make, path, what, layout, how)


def imagenet_1k_labelled(path, train: bool = False, **kwargs) -> ImageNetSubset:
    """Wnid folders under ``path`` labelled with ImageNet-1K indices: ``imagenet_folder(path, labels="1k")``.

    For evaluating (or fine-tuning) a 1000-class model on Imagenette, the ImageNet val sample or any subset
    of ImageNet classes. Keyword arguments are those of :func:`imagenet_folder`.
    """
    return imagenet_folder(path, train, labels="1k", **kwargs)


def imagenette(
    split: str = "train",
    labels: str = "1k",
    train: bool | None = None,
    normalization: str = "imagenet",
    image_size: int = 224,
    transform: Callable | None = None,
    root=None,
) -> ImageFolderRGB:
    """Imagenette ``split`` ("train" | "val") from ``<root>/imagenette/<split>/<wnid>/*.JPEG``.

    ``labels="1k"``: ImageNet-1K indices (evaluate a pretrained 1000-class model, or fine-tune it with its
    1000-way head); ``labels="local"``: 0..9. ``train`` (augmentation) defaults to ``split == "train"``.
    """
    _check_choice("split", split, ("train", "val"))
    base = _resolve_root(root)
    folder = base / "imagenette"
    augment = split == "train" if train is None else train
    return _image_folder(
        folder / split, augment, normalization, image_size, labels, transform, None, base,
        what=f"Imagenette {split} split", how=_IMAGENETTE_HOW.format(folder=folder, root=base),
    )  # fmt: skip


def imagenet_val_sample(
    normalization: str = "imagenet", image_size: int = 224, transform: Callable | None = None, root=None
) -> ImageNetSubset:
    """The ImageNet validation sample ``<root>/imagenet-val-sample/<wnid>/*.JPEG`` with ImageNet-1K labels
    (evaluation pipeline)."""
    base = _resolve_root(root)
    return _image_folder(
        base / "imagenet-val-sample", False, normalization, image_size, "1k", transform, None, base,
        what="ImageNet validation sample", how=_VAL_SAMPLE_HOW.format(root=base),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- loaders
def default_workers() -> int:
    """Loader worker processes by default: one core left for the main process, at most 4 (0 on one core)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's random augmentation, a hash (splitmix64) of (seed, epoch, index)."""
    mask = (1 << 64) - 1
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + index * 0x8CB92BA72F3D8DD7) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return (x ^ (x >> 31)) >> 1


class EpochSampler(Sampler):
    """Index sampler whose order depends only on ``(seed, epoch)`` and that can start mid-epoch.

    Yields ``(index, sample_seed)`` pairs for :class:`SeededSamples`. ``indices`` are the data set indices to
    use (all, or a fixed subset); with ``shuffle`` they are permuted by a generator seeded with ``seed + epoch``
    (the same permutation as ``DistributedSampler`` for the full data set). With ``num_replicas > 1`` each
    rank takes every ``num_replicas``-th index of the order, padded like ``DistributedSampler`` so that all
    ranks get the same count. ``start_batch`` skips that rank's first ``start_batch * batch_size`` indices
    without loading them (``drop_last`` only sets how many batches an epoch has, for checking ``start_batch``);
    ``set_epoch(epoch, start_batch=0)`` moves to another epoch.
    """

    def __init__(
        self,
        indices: Sequence[int],
        *,
        shuffle: bool,
        seed: int,
        batch_size: int,
        drop_last: bool = False,
        epoch: int = 0,
        start_batch: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is not in [0, num_replicas={num_replicas}).")
        self.indices = torch.as_tensor(list(indices), dtype=torch.int64)
        self.shuffle, self.seed, self.batch_size, self.drop_last = shuffle, int(seed), int(batch_size), drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch ``epoch``'s order from its batch ``start_batch`` on (call before each epoch)."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(
                f"start_batch={start_batch} is outside this epoch's {self.num_batches} batches (per rank)."
            )
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    @property
    def samples_per_rank(self) -> int:
        """Samples each rank gets in a whole epoch (padded so that all ranks get the same count)."""
        return -(-len(self.indices) // self.num_replicas)

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch on each rank (the last incomplete one counted unless ``drop_last``)."""
        full, rest = divmod(self.samples_per_rank, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch_order(self) -> list[int]:
        """This rank's data set indices for the current epoch, from its first batch."""
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = order[torch.randperm(len(order), generator=generator)]
        total = -(-len(order) // self.num_replicas) * self.num_replicas
        if total > len(order):  # pad by repeating the start, as DistributedSampler does
            order = order.repeat(-(-total // len(order)))[:total]
        return order[self.rank : total : self.num_replicas].tolist()

    def __iter__(self):
        for index in self.epoch_order()[self.start_batch * self.batch_size :]:
            yield index, _sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, self.samples_per_rank - self.start_batch * self.batch_size)


class SeededSamples(Dataset):
    """Wraps a data set so that ``[(index, seed)]`` loads item ``index`` with torch's RNG seeded by ``seed``.

    Random augmentations that draw from torch's generator (all torchvision transforms) then depend only on
    the sample's seed, not on which worker loads it or on what was loaded before. The caller's RNG state is
    restored afterwards. A plain integer index loads the item unseeded. Other attributes (``classes``,
    ``targets``, ...) are those of the wrapped data set.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            index, seed = item
            generator = torch.default_generator  # torchvision transforms draw from it
            state = generator.get_state()
            generator.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                generator.set_state(state)
        return self.dataset[item]

    def __getattr__(self, name: str):
        if name == "dataset" or name.startswith("__"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _seed_worker(worker_id: int, seed: int, epoch: int) -> None:
    """worker_init_fn: seed Python's ``random``, NumPy and torch in each worker from (seed, epoch, worker)."""
    worker_seed = _sample_seed(seed, epoch, -1 - worker_id)
    random.seed(worker_seed)
    np.random.seed(worker_seed % 2**32)
    torch.manual_seed(worker_seed)


def _subset_indices(size: int, subset: int | None, seed: int) -> list[int]:
    """All indices, or a fixed random subset of ``subset`` of them (sorted; chosen by ``seed`` only)."""
    if subset is None or subset >= size:
        return list(range(size))
    if subset < 1:
        raise ValueError(f"subset={subset} must be a positive number of samples (or None for all).")
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:subset].tolist())


def _replicas(distributed: bool, num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``: explicit values, else torch.distributed's world when ``distributed``."""
    if num_replicas is not None or rank is not None:
        return (num_replicas or 1), (rank or 0)
    if not distributed:
        return 1, 0
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            "make_loader(distributed=True) needs an initialised process group (start with torchrun and call "
            "torch.distributed.init_process_group), or pass num_replicas= and rank=."
        )
    return torch.distributed.get_world_size(), torch.distributed.get_rank()


class _WithIndex(Dataset):
    """Item i is ``(*dataset[i], i)``; attributes are those of the wrapped data set."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return (*self.dataset[index], index)

    def __getattr__(self, name: str):
        if name == "dataset" or name.startswith("__"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int,
    workers: int | None = None,
    distributed: bool = False,
    subset: int | None = None,
    epoch: int = 0,
    start_batch: int = 0,
    *,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool | None = None,
    with_index: bool = False,
    whole_batches: bool | None = None,
) -> DataLoader | WholeBatchLoader:
    """A loader whose batches depend only on ``(seed, epoch)`` -- not on ``workers``.

    ``train``: shuffle (generator seeded with ``seed + epoch``) and drop the last incomplete batch; else the
    data set order, every sample kept. ``subset``: a fixed random subset of that many samples, chosen by
    ``seed`` alone (the same in every epoch; all samples when ``subset >= len(dataset)``; smoke/laptop
    profiles). ``distributed``: shard across the torch.distributed ranks like DistributedSampler, padded to
    equal shards (or give ``num_replicas``/``rank``); in evaluation the padding counts a few samples twice,
    as with DistributedSampler. ``start_batch``:
    resume mid-epoch: skip this epoch's first ``start_batch`` batches without loading them, so the loader
    yields exactly batches ``start_batch, ...`` of the full pass. For the next epochs call
    ``loader.sampler.set_epoch(e)`` (or build a new loader with ``epoch=e``). ``with_index``: every batch
    also carries the data set indices of its samples, ``(images, labels, indices)``.

    ``workers`` defaults to :func:`default_workers`; with workers each one is seeded (``random``, NumPy,
    torch) from ``(seed, epoch, worker id)`` and kept alive across epochs. Random torchvision augmentations
    are drawn per sample from a seed of ``(seed, epoch, index)`` (see :class:`SeededSamples`).
    ``loader.dataset`` is the wrapped data set; its attributes (``classes``, ...) pass through.

    Whole batches: for CIFAR-10 in memory (:class:`CIFAR10InMemory`, or torchvision's CIFAR10) with the
    standard pipeline, the loader is a :class:`~labkit.cifar_memory.WholeBatchLoader` by default
    (``whole_batches=None``): each batch is gathered, cropped, flipped and normalised as one tensor in this
    process (``workers`` unused), with the same order, the same random draws and the same tensors, bit for
    bit, as the per-image DataLoader (``whole_batches=False``). ``whole_batches=True`` requires it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    if len(dataset) == 0:
        raise ValueError("the data set is empty.")
    workers = default_workers() if workers is None else workers
    replicas, rank = _replicas(distributed, num_replicas, rank)
    sampler = EpochSampler(
        _subset_indices(len(dataset), subset, seed), shuffle=train, seed=seed, batch_size=batch_size, drop_last=train,
        epoch=epoch, start_batch=start_batch, num_replicas=replicas, rank=rank,
    )  # fmt: skip
    if sampler.num_batches == 0:
        raise ValueError(
            f"{sampler.samples_per_rank} training samples per rank give no full batch of {batch_size} (the last "
            "incomplete batch is dropped in training); use a larger subset or a smaller batch_size."
        )
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    source = batch_source(dataset) if whole_batches is not False else None
    if whole_batches and source is None:
        raise ValueError(
            "whole_batches=True needs CIFAR-10 in memory with its standard pipeline (cifar10(split) with the default "
            f"transform); this data set is a {type(dataset).__name__}. Use whole_batches=None to fall back."
        )
    if source is not None:
        return WholeBatchLoader(dataset, source, sampler, batch_size, drop_last=train, with_index=with_index,
                                pin_memory=pin_memory)
    return DataLoader(
        SeededSamples(_WithIndex(dataset) if with_index else dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=train,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_seed_worker, seed=seed, epoch=epoch) if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed + epoch),
        persistent_workers=workers > 0,
    )

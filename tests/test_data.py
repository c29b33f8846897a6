"""labkit.data: real CIFAR-10 / Imagenette / ImageNet-sample folders, labels, errors and reproducible loaders.

The real data sets are read from ``labkit.config.data_root()`` ($LABKIT_DATA); a test that needs one skips,
naming the folder, only when the data root lacks it. No test iterates a whole data set.
"""
from __future__ import annotations

import pickle
import random
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from labkit import config, data
from labkit.data import DataLayoutError
from labkit.errors import DataNotFoundError

IMAGENETTE = {  # wnid -> ImageNet-1K index of the 10 Imagenette classes
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701,
}  # fmt: skip


def need(name: str) -> Path:
    """``<data root>/name``, or skip the test saying which folder the data root lacks."""
    path = config.data_root() / name
    if not path.exists():
        pytest.skip(f"{name} is not in the data root {config.data_root()} (set LABKIT_DATA to a root that has it)")
    return path


def save_image(path: Path, mode: str = "RGB", size=(40, 30)) -> Path:
    """Write a small image of the given PIL mode (its format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"L": 128, "P": 3, "CMYK": (0, 50, 100, 0), "RGBA": (10, 20, 30, 128)}.get(mode, (10, 200, 30))
    Image.new(mode, size, color).save(path)
    return path


def write_class_index(path: Path, wnids, sep="\t") -> Path:
    path.write_text("".join(f"{w}{sep}class {i}\n" for i, w in enumerate(wnids)))
    return path


# ------------------------------------------------------------------------------------------------ CIFAR-10
@pytest.fixture(scope="module")
def cifar_test():
    need("cifar10/test")
    return data.cifar10("test")


@pytest.fixture(scope="module")
def cifar_train():
    need("cifar10/train")
    return data.cifar10("train")


def test_cifar10_test_split_shapes_and_canonical_labels(cifar_test):
    assert len(cifar_test) == 10_000
    assert list(cifar_test.classes) == list(data.CIFAR10_CLASSES)
    assert cifar_test.num_classes == 10 and cifar_test.classes_present == list(range(10))
    assert data.CIFAR10_CLASSES[0] == "airplane" and data.CIFAR10_CLASSES[9] == "truck"
    image, label = cifar_test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert (label, cifar_test[len(cifar_test) - 1][1]) == (0, 9)
    for i in (0, 2500, 5123, 9999):  # a label is its class folder's position in the canonical list
        path, target = cifar_test.samples[i]
        assert data.CIFAR10_CLASSES[target] == Path(path).parent.name


def test_cifar10_test_transform_is_to_tensor_and_normalize(cifar_test):
    path, _ = cifar_test.samples[17]
    raw = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    expected = (raw - torch.tensor(data.CIFAR10_MEAN)[:, None, None]) / torch.tensor(data.CIFAR10_STD)[:, None, None]
    torch.testing.assert_close(cifar_test[17][0], expected)


def test_cifar10_train_split_augments(cifar_train):
    assert len(cifar_train) == 50_000
    assert list(cifar_train.classes) == list(data.CIFAR10_CLASSES)
    views = torch.stack([cifar_train[123][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32)
    assert not all(torch.equal(views[0], v) for v in views[1:])  # random crop / flip at work
    names = [type(t).__name__ for t in data.cifar10_transforms(train=True).transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert [type(t).__name__ for t in data.cifar10_transforms(train=False).transforms] == ["ToTensor", "Normalize"]


def fake_torchvision_cifar(folder: Path, per_class: int = 2) -> None:
    """A tiny copy in torchvision's cifar-10-batches-py format (pickled batches, label names in batches.meta)."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    labels = [c for c in range(10) for _ in range(per_class)]
    pixels = np.arange(len(labels) * 3072, dtype=np.uint32).astype(np.uint8).reshape(len(labels), 3072)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(pickle.dumps({"data": pixels, "labels": labels}))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.CIFAR10_CLASSES)}))


def test_cifar10_falls_back_to_torchvision_layout(tmp_path, monkeypatch):
    fake_torchvision_cifar(tmp_path / "cifar10")
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)  # fake md5s
    dataset = data.cifar10("test", root=tmp_path, download=False)
    assert list(dataset.classes) == list(data.CIFAR10_CLASSES)
    assert dataset.num_classes == 10 and dataset.classes_present == list(range(10))
    assert len(dataset) == 20 and dataset[0][0].shape == (3, 32, 32)
    assert dataset[0][1] == 0 and dataset[19][1] == 9


def test_cifar10_missing_without_download_names_both_layouts(tmp_path):
    with pytest.raises(DataNotFoundError) as caught:
        data.cifar10("test", root=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "cifar10" / "test") + "/<class>/*.jpg" in message
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in message
    assert "LABKIT_DATA" in message and "download" in message and "RuntimeError" in message


def test_cifar10_failed_download_is_one_data_error_with_the_reason(tmp_path, monkeypatch):
    def no_internet(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_internet)
    with pytest.raises(DataNotFoundError) as caught:
        data.cifar10("train", root=tmp_path)  # no ImageFolder copy: download defaults to True
    message = str(caught.value)
    assert "the download failed (URLError: <urlopen error [Errno -2] Name or service not known>)" in message
    assert "\n" not in message and "internet" in message and "LABKIT_DATA" in message
    assert isinstance(caught.value.__cause__, urllib.error.URLError)


def test_cifar10_image_folder_with_wrong_classes_is_refused(tmp_path):
    for name in ("cat", "dog"):
        save_image(tmp_path / "cifar10" / "test" / name / "0000.png")
    with pytest.raises(DataLayoutError, match="airplane"):
        data.cifar10("test", root=tmp_path)


def test_cifar10_empty_image_folder_is_not_found(tmp_path):
    for name in data.CIFAR10_CLASSES:
        (tmp_path / "cifar10" / "train" / name).mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="Found no valid file") as caught:
        data.cifar10("train", root=tmp_path)
    assert str(tmp_path / "cifar10" / "train") in str(caught.value)


def test_cifar10_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        data.cifar10("val")


# ------------------------------------------------------------------------------------------------ ImageNet
def test_imagenet_class_index_maps_wnids_to_standard_indices():
    need("imagenet_classes.txt")
    wnid_to_index, names = data.imagenet_class_index()
    assert len(wnid_to_index) == len(names) == 1000
    assert wnid_to_index["n01440764"] == 0 and names[0].startswith("tench")
    assert {w: wnid_to_index[w] for w in IMAGENETTE} == IMAGENETTE
    assert data.imagenet_class_index().wnids == sorted(wnid_to_index)  # ImageNet-1K order = sorted wnids


def test_imagenet_class_index_reads_a_file_path_and_space_separated_lines(tmp_path):
    path = write_class_index(tmp_path / "LOC_synset_mapping.txt", ["n00000002", "n00000001"], sep=" ")
    index = data.imagenet_class_index(path)
    assert index.wnid_to_index == {"n00000002": 0, "n00000001": 1} and index.names == ["class 0", "class 1"]


def test_imagenet_class_index_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="imagenet_classes.txt"):
        data.imagenet_class_index(tmp_path)
    write_class_index(tmp_path / "imagenet_classes.txt", ["n00000001", "n00000001"])
    with pytest.raises(DataLayoutError, match="twice"):
        data.imagenet_class_index(tmp_path)
    (tmp_path / "imagenet_classes.txt").write_text("n00000001\ttench\ntench\tn00000002\n")
    with pytest.raises(DataLayoutError, match="line 2"):
        data.imagenet_class_index(tmp_path)


def test_imagenette_val_with_imagenet_1k_labels():
    need("imagenette/val")
    dataset = data.imagenette("val", labels="1k")
    assert isinstance(dataset, data.ImageNetSubset)
    assert dataset.num_classes == 1000 and len(dataset.classes) == 1000
    assert dataset.classes_present == sorted(IMAGENETTE.values())
    assert sorted(dataset.wnids_present) == sorted(IMAGENETTE)
    assert set(dataset.targets) <= set(IMAGENETTE.values())
    for path, target in dataset.samples[::400]:
        assert target == IMAGENETTE[Path(path).parent.name] and dataset.classes[target] == Path(path).parent.name
    image, target = dataset[0]
    assert image.shape == (3, 224, 224) and target == 0 and dataset.class_names[target].startswith("tench")


def test_imagenette_local_labels_and_train_pipeline():
    need("imagenette/train")
    dataset = data.imagenette("train", labels="local", normalization="efficientnet")
    assert dataset.num_classes == 10 and dataset.classes_present == list(range(10))
    assert dataset.classes == sorted(IMAGENETTE)
    names = [type(t).__name__ for t in dataset.transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert tuple(dataset.transform.transforms[-1].mean) == (0.5, 0.5, 0.5)
    assert dataset[0][0].shape == (3, 224, 224)


def test_imagenet_val_sample_labels_match_folder_wnids():
    need("imagenet-val-sample")
    wnid_to_index, _ = data.imagenet_class_index()
    dataset = data.imagenet_1k_labelled(need("imagenet-val-sample"), normalization="efficientnet")
    assert len(dataset) == 1300 and len(dataset.classes_present) == 725 and dataset.num_classes == 1000
    assert all(target == wnid_to_index[Path(path).parent.name] for path, target in dataset.samples)
    names = [type(t).__name__ for t in dataset.transform.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert dataset.transform.transforms[0].size == 256 and dataset.transform.transforms[1].size == (224, 224)
    assert data.imagenet_val_sample().samples == dataset.samples
    assert dataset[len(dataset) - 1][0].shape == (3, 224, 224)


def test_eval_pipeline_scales_with_image_size():
    steps = data.imagenet_transforms(train=False, image_size=112).transforms
    assert steps[0].size == 128 and steps[1].size == (112, 112)
    with pytest.raises(ValueError, match="normalization"):
        data.imagenet_transforms(train=False, normalization="cifar")


@pytest.mark.parametrize("labels", ["local", "1k"])
def test_non_rgb_images_come_out_with_three_channels(tmp_path, labels):
    modes = {"L": "gray.png", "P": "palette.png", "CMYK": "cmyk.jpg", "RGBA": "alpha.png", "RGB": "rgb.jpg"}
    wnids = ["n00000001", "n00000002"]
    for i, (mode, name) in enumerate(modes.items()):
        save_image(tmp_path / "images" / wnids[i % 2] / name, mode)
    index = data.imagenet_class_index(write_class_index(tmp_path / "classes.txt", ["n00000000", *wnids]))
    dataset = data.imagenet_folder(tmp_path / "images", train=False, labels=labels, class_index=index)
    assert len(dataset) == len(modes)
    assert all(dataset[i][0].shape == (3, 224, 224) for i in range(len(dataset)))
    assert sorted(set(dataset.targets)) == ([0, 1] if labels == "local" else [1, 2])
    assert data.load_rgb(tmp_path / "images" / wnids[0] / "gray.png").mode == "RGB"


def test_unknown_wnid_folder_is_a_clear_error(tmp_path):
    save_image(tmp_path / "images" / "n01440764" / "a.jpg")
    save_image(tmp_path / "images" / "cats" / "b.jpg")
    index = data.imagenet_class_index(write_class_index(tmp_path / "classes.txt", ["n01440764"]))
    with pytest.raises(DataLayoutError, match=r"not ImageNet-1K wnids \(e.g. \['cats'\]\)"):
        data.imagenet_1k_labelled(tmp_path / "images", class_index=index)


def test_hidden_folders_are_not_classes(tmp_path):
    save_image(tmp_path / "a" / "x.png")
    save_image(tmp_path / ".ipynb_checkpoints" / "x.png")
    assert data.imagenet_folder(tmp_path, train=False).classes == ["a"]


# ------------------------------------------------------------------------------------- missing data errors
def empty_class_folders(path: Path) -> Path:
    (path / "n01440764").mkdir(parents=True)
    (path / "n01443537").mkdir()
    (path / "n01443537" / "notes.txt").write_text("not an image")
    return path


MISSING = {
    "nonexistent": (lambda p: p / "nowhere", "the folder does not exist"),
    "a file": (lambda p: save_image(p / "x.png"), "it is not a folder"),
    "empty": (lambda p: p, "it has no class sub-folders"),
    "no images": (empty_class_folders, "Found no valid file for the classes n01440764, n01443537"),
}


@pytest.mark.parametrize("case", MISSING, ids=list(MISSING))
def test_missing_or_empty_imagenet_folder(tmp_path, case):
    make, reason = MISSING[case]
    path = make(tmp_path)
    with pytest.raises(DataNotFoundError) as caught:
        data.imagenet_folder(path, train=True)
    message = str(caught.value)
    assert f"not found at {path}: {reason}" in message
    assert f"Expected layout: {path}/<class>/" in message and "image-net.org" in message
    assert isinstance(caught.value, FileNotFoundError)


@pytest.mark.parametrize("case", ["nonexistent", "empty", "no images"])
def test_missing_or_empty_imagenette(tmp_path, case):
    root = tmp_path / "root"
    root.mkdir()
    write_class_index(root / "imagenet_classes.txt", [*IMAGENETTE, "n01443537"])  # the folder, not the list, fails
    folder = root / "imagenette" / "val"
    if case != "nonexistent":
        folder.mkdir(parents=True)
    if case == "no images":
        empty_class_folders(folder)
    with pytest.raises(DataNotFoundError) as caught:
        data.imagenette("val", root=root)
    message = str(caught.value)
    assert f"Imagenette val split not found at {folder}" in message
    assert "imagenette2" in message and "LABKIT_DATA" in message


def test_1k_labels_check_the_folder_before_the_class_list(tmp_path):
    with pytest.raises(DataNotFoundError, match="Imagenette val split not found"):
        data.imagenette("val", root=tmp_path)  # neither the folder nor imagenet_classes.txt: the folder is named
    (tmp_path / "imagenette" / "val").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="Imagenette val split not found .* no class sub-folders"):
        data.imagenette("val", root=tmp_path)
    save_image(tmp_path / "imagenette" / "val" / "n01440764" / "a.jpg")
    with pytest.raises(DataNotFoundError, match="ImageNet class list not found"):
        data.imagenette("val", root=tmp_path)


# ------------------------------------------------------------------------------------------------- loaders
class Noisy(Dataset):
    """Item i: (i, a torch random number, a Python random number, a NumPy random number)."""

    def __init__(self, size: int = 50):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return torch.tensor(i), torch.rand(()), random.random(), float(np.random.rand())


def batches(loader, fields=(0, 1)):
    """The loader's batches as lists of [index, torch random] rows (the fields every worker count agrees on)."""
    return [torch.stack([batch[f].to(torch.float64) for f in fields], 1).tolist() for batch in loader]


def indices(loader):
    return [i for batch in loader for i in batch[0].tolist()]


def test_same_seed_same_batches_for_any_worker_count():
    reference = batches(data.make_loader(Noisy(), 8, train=True, seed=3, workers=0))
    assert len(reference) == 6  # 50 // 8, last incomplete batch dropped
    assert sorted(i for b in reference for i, _ in b) != list(range(48))  # shuffled, not the first 48
    assert batches(data.make_loader(Noisy(), 8, train=True, seed=3, workers=0)) == reference
    assert batches(data.make_loader(Noisy(), 8, train=True, seed=3, workers=2)) == reference


def test_workers_seed_random_and_numpy_from_the_seed():
    def run():
        return batches(data.make_loader(Noisy(), 8, train=True, seed=5, workers=2), fields=(0, 1, 2, 3))

    first = run()
    assert run() == first
    assert len({row[2] for b in first for row in b}) == 48  # not the same state in both workers


def test_seed_and_epoch_change_the_order():
    order = indices(data.make_loader(Noisy(), 10, train=True, seed=0, workers=0))
    assert indices(data.make_loader(Noisy(), 10, train=True, seed=1, workers=0)) != order
    assert indices(data.make_loader(Noisy(), 10, train=True, seed=0, workers=0, epoch=1)) != order
    loader = data.make_loader(Noisy(), 10, train=True, seed=0, workers=0)
    loader.sampler.set_epoch(1)
    assert indices(loader) == indices(data.make_loader(Noisy(), 10, train=True, seed=0, workers=0, epoch=1))


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_training_order_matches_distributed_sampler(replicas):
    for rank in range(replicas):
        loader = data.make_loader(Noisy(51), 5, True, seed=7, epoch=2, workers=0, num_replicas=replicas, rank=rank)
        reference = torch.utils.data.DistributedSampler(Noisy(51), num_replicas=replicas, rank=rank, seed=7)
        reference.set_epoch(2)
        assert loader.sampler.epoch_order() == list(reference)


def test_eval_loader_keeps_order_and_every_sample():
    loader = data.make_loader(Noisy(), 8, train=False, seed=0, workers=0)
    assert len(loader) == 7 and indices(loader) == list(range(50))


def test_subset_is_fixed_by_the_seed():
    def subset(seed, epoch=0, train=True):
        return indices(data.make_loader(Noisy(), 4, train=train, seed=seed, workers=0, subset=20, epoch=epoch))

    chosen = sorted(subset(0))
    assert len(chosen) == 20 and len(set(chosen)) == 20
    assert sorted(subset(0, epoch=1)) == chosen and subset(0, epoch=1) != subset(0)  # same samples, new order
    assert subset(0, train=False) == chosen  # eval: same subset, in index order
    assert sorted(subset(1)) != chosen
    assert len(indices(data.make_loader(Noisy(), 4, train=False, seed=0, workers=0, subset=500))) == 50


def test_start_batch_resumes_exactly():
    full = batches(data.make_loader(Noisy(), 8, train=True, seed=11, epoch=3, workers=0))
    resumed = data.make_loader(Noisy(), 8, train=True, seed=11, epoch=3, workers=2, start_batch=4)
    assert len(resumed) == len(full) - 4
    assert batches(resumed) == full[4:]  # same samples and the same random draws, other worker count
    resumed.sampler.set_epoch(4)  # the next epoch starts from its first batch
    assert batches(resumed) == batches(data.make_loader(Noisy(), 8, train=True, seed=11, epoch=4, workers=0))
    done = data.make_loader(Noisy(), 8, train=False, seed=11, workers=0, start_batch=7)  # 7 eval batches: all done
    assert len(done) == 0 and list(done) == []
    last = data.make_loader(Noisy(), 8, train=False, seed=11, workers=0, start_batch=6)
    assert indices(last) == [48, 49]  # the incomplete last eval batch


def test_start_batch_out_of_range():
    with pytest.raises(ValueError, match="start_batch=7 is outside this epoch's 6 batches"):
        data.make_loader(Noisy(), 8, train=True, seed=0, workers=0, start_batch=7)  # 50 // 8 = 6 training batches
    with pytest.raises(ValueError, match="start_batch"):
        data.make_loader(Noisy(), 8, train=False, seed=0, workers=0, start_batch=-1)


def test_loader_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(data.make_loader(Noisy(), 8, train=True, seed=0, workers=0))
    assert torch.equal(torch.rand(3), expected)


def test_distributed_shards_are_disjoint_and_cover_the_data():
    shards = [
        indices(data.make_loader(Noisy(), 5, train=False, seed=0, workers=0, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 25
    assert sorted(shards[0] + shards[1]) == list(range(50))
    padded = [data.make_loader(Noisy(51), 5, train=True, seed=0, workers=0, num_replicas=2, rank=r) for r in (0, 1)]
    assert [len(loader.sampler) for loader in padded] == [26, 26]  # padded like DistributedSampler
    with pytest.raises(RuntimeError, match="process group"):
        data.make_loader(Noisy(), 5, train=True, seed=0, workers=0, distributed=True)


def test_too_small_training_subset_is_refused():
    with pytest.raises(ValueError, match="no full batch"):
        data.make_loader(Noisy(), 32, train=True, seed=0, workers=0, subset=16)


def test_default_workers_leave_a_core_free():
    assert 0 <= data.default_workers() <= 4


def test_real_cifar_loader_with_workers_is_deterministic_and_resumable(cifar_train):
    def loader(**kwargs):  # the per-image DataLoader (whole batches: tests/test_memory_loader.py)
        return data.make_loader(cifar_train, 8, train=True, seed=0, subset=48, workers=2, whole_batches=False, **kwargs)

    first = list(loader())
    assert len(first) == 6 and first[0][0].shape == (8, 3, 32, 32) and first[0][1].dtype == torch.int64
    second = list(loader())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    resumed = list(loader(start_batch=4))
    assert len(resumed) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[4:], resumed))
    wrapped = loader().dataset
    assert wrapped.classes == cifar_train.classes  # attributes pass through the loader's wrapper
    copy = pickle.loads(pickle.dumps(wrapped))  # what "spawn" workers (macOS, Windows) receive
    assert torch.equal(copy[(7, 123)][0], wrapped[(7, 123)][0])

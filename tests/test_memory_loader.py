"""CIFAR-10 in memory and its whole-batch loader (labkit.cifar_memory): the same images, draws and batches as the
per-image ImageFolder / torchvision pipeline, bit for bit."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from labkit import cifar_memory, config, data
from labkit.cifar_memory import CIFAR10InMemory, WholeBatchLoader
from labkit.data import DataLayoutError


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # scripts/gpu_check.sh runs the cuda cases


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test caches decoded images in its own folder (real-data tests opt back into the user cache)."""
    monkeypatch.setenv(cifar_memory.CACHE_ENV, str(tmp_path / "cache"))


def fake_cifar_folder(root: Path, per_class: int = 5, size=(32, 32), seed: int = 0) -> Path:
    """``root/cifar10/{train,test}/<class>/NNNN.jpg``: random-noise JPEGs under the 10 canonical class names."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in data.CIFAR10_CLASSES:
            folder = root / "cifar10" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=75)
    return root


def fake_torchvision_cifar(folder: Path, per_class: int = 3) -> None:
    """A tiny copy in torchvision's cifar-10-batches-py format (pickled batches, label names in batches.meta)."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    labels = [c for c in range(10) for _ in range(per_class)]
    pixels = np.random.default_rng(1).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(pickle.dumps({"data": pixels, "labels": labels}))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.CIFAR10_CLASSES)}))


def same_batches(fast, slow) -> bool:
    fast, slow = list(fast), list(slow)
    return len(fast) == len(slow) and all(
        len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))
        for a, b in zip(fast, slow))


@pytest.fixture
def fake_root(tmp_path):
    return fake_cifar_folder(tmp_path / "data")


# ------------------------------------------------------------------------------------------------ decoding
def test_in_memory_images_equal_per_image_decoding_and_the_cache_is_reused(fake_root):
    memory = data.cifar10("train", root=fake_root)
    folder = data.cifar10("train", root=fake_root, in_memory=False)
    assert isinstance(memory, CIFAR10InMemory) and isinstance(folder, data.ImageFolderRGB)
    assert memory.images.dtype == torch.uint8 and memory.images.shape == (50, 32, 32, 3)
    for i, (path, target) in enumerate(folder.samples):  # the independent reference: PIL, one file at a time
        assert np.array_equal(memory.images[i].numpy(), np.asarray(Image.open(path).convert("RGB")))
        assert memory.targets[i] == target and memory.samples[i] == (path, target)
    assert (memory.classes, memory.num_classes, memory.classes_present) == (folder.classes, 10, list(range(10)))
    cached = list((fake_root.parent / "cache").glob("cifar10-train-*.npy"))
    assert len(cached) == 1
    # The second call reads the cache: prove it by corrupting the JPEGs' pixels in the cache only.
    np.save(cached[0], np.zeros((50, 32, 32, 3), np.uint8))
    assert data.cifar10("train", root=fake_root).images.sum() == 0
    for i in (0, 17, 49):  # items equal the folder's items, transform included (seeded alike)
        torch.manual_seed(i)
        expected = folder[i]
        torch.manual_seed(i)
        assert torch.equal(memory[i][0], expected[0]) and memory[i][1] == expected[1]


def test_a_changed_file_makes_a_new_cache_entry(fake_root):
    first = data.cifar10("test", root=fake_root)
    path = Path(first.samples[3][0])
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path, format="JPEG", quality=75)
    second = data.cifar10("test", root=fake_root)
    assert np.array_equal(second.images[3].numpy(), np.asarray(Image.open(path).convert("RGB")))
    assert not torch.equal(first.images[3], second.images[3])
    assert len(list((fake_root.parent / "cache").glob("cifar10-test-*.npy"))) == 2


def test_cache_lives_outside_the_data_root_and_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(cifar_memory.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cifar_memory.cache_dir() == tmp_path / "xdg" / "labkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cifar_memory.cache_dir() == Path.home() / ".cache" / "labkit"
    root = config.checkout_root()
    assert root is None or not cifar_memory.cache_dir().is_relative_to(root)


def test_unwritable_cache_warns_and_still_loads(fake_root, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(cifar_memory.CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not cache"):
        memory = data.cifar10("test", root=fake_root)
    assert memory.images.shape == (50, 32, 32, 3)


def test_images_of_another_size_fall_back_to_the_folder(tmp_path):
    root = fake_cifar_folder(tmp_path / "data", per_class=1, size=(40, 30))
    with pytest.warns(UserWarning, match="not 32x32"):
        dataset = data.cifar10("test", root=root)
    assert isinstance(dataset, data.ImageFolderRGB)
    with pytest.raises(DataLayoutError, match="in_memory=False"):
        data.cifar10("test", root=root, in_memory=True)


def test_an_unreadable_image_is_one_clear_error(fake_root):
    (fake_root / "cifar10" / "test" / "cat" / "0002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataLayoutError, match="0002.jpg is not a readable image"):
        data.cifar10("test", root=fake_root)


# ---------------------------------------------------------------------------------------------- augmentation
def brute_force_crop_flip(image: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """One HWC image: zero-pad by 4, take the 32x32 window at (top, left), mirror left-right."""
    padded = np.zeros((40, 40, 3), np.uint8)
    padded[4:36, 4:36] = image
    window = padded[top:top + 32, left:left + 32]
    return window[:, ::-1] if flip else window


def test_crop_flip_equals_a_brute_force_crop_for_every_corner_and_flip():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (162, 32, 32, 3), dtype=np.uint8))
    tops, lefts, flips = torch.meshgrid(torch.arange(9), torch.arange(9), torch.arange(2), indexing="ij")
    tops, lefts, flips = tops.reshape(-1), lefts.reshape(-1), flips.reshape(-1).bool()  # all 162 (top, left, flip)
    out = cifar_memory.crop_flip(images, tops, lefts, flips)
    assert out.shape == (162, 3, 32, 32) and out.dtype == torch.uint8  # channels first, like ToTensor
    for k in range(162):
        expected = brute_force_crop_flip(images[k].numpy(), int(tops[k]), int(lefts[k]), bool(flips[k]))
        assert np.array_equal(out[k].permute(1, 2, 0).numpy(), expected), (int(tops[k]), int(lefts[k]), bool(flips[k]))


def test_draws_are_the_torchvision_transforms_draws():
    seeds = [0, 1, 2**62 + 12345, 987654321]
    tops, lefts, flips = cifar_memory.crop_flip_draws(seeds)
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)  # what SeededSamples does before the transform runs
        assert tops[k] == torch.randint(0, 9, (1,)) and lefts[k] == torch.randint(0, 9, (1,))
        assert bool(flips[k]) == bool(torch.rand(1) < 0.5)
    draws = torch.stack(cifar_memory.crop_flip_draws(range(400))[:2])
    assert draws.min() == 0 and draws.max() == 8  # every corner reachable


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False])
def test_augmented_batch_equals_the_torchvision_pipeline_bit_for_bit(train, device):
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    seeds = [data._sample_seed(5, 2, i) for i in range(64)]
    batch = cifar_memory.augment_batch(images.to(device), seeds if train else None)
    assert batch.device.type == device
    batch = batch.cpu()
    pipeline = data.cifar10_transforms(train)
    expected = []
    for image, seed in zip(images, seeds):
        torch.manual_seed(seed)
        expected.append(pipeline(Image.fromarray(image.numpy())))
    expected = torch.stack(expected)
    assert batch.dtype == torch.float32 and batch.is_contiguous() and batch.shape == (64, 3, 32, 32)
    assert torch.equal(batch, expected)


def test_standard_pipeline_is_recognised_by_its_settings():
    assert cifar_memory.standard_pipeline(data.cifar10_transforms(True)) == "train"
    assert cifar_memory.standard_pipeline(data.cifar10_transforms(False)) == "test"
    other = [
        transforms.Compose([transforms.RandomCrop(32, padding=2), transforms.RandomHorizontalFlip(),
                            transforms.ToTensor(), transforms.Normalize(data.CIFAR10_MEAN, data.CIFAR10_STD)]),
        transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4),
                            transforms.ToTensor(), transforms.Normalize(data.CIFAR10_MEAN, data.CIFAR10_STD)]),
        transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]),
        transforms.Compose([transforms.ToTensor()]),
        transforms.ToTensor(),
        None,
    ]
    assert [cifar_memory.standard_pipeline(t) for t in other] == [None] * len(other)


# ---------------------------------------------------------------------------------------------- the loader
@pytest.mark.parametrize("split", ["train", "test"])
def test_whole_batches_equal_the_per_image_loader(fake_root, split):
    memory = data.cifar10(split, root=fake_root)
    folder = data.cifar10(split, root=fake_root, in_memory=False)
    for train in (True, False):
        for seed, epoch in ((0, 0), (3, 1), (3, 2)):
            options = dict(batch_size=8, train=train, seed=seed, epoch=epoch, workers=0)
            fast = data.make_loader(memory, **options)
            assert isinstance(fast, WholeBatchLoader)
            slow = data.make_loader(folder, **options)
            assert len(fast) == len(slow) == (6 if train else 7)
            assert same_batches(fast, slow)
            assert same_batches(fast, data.make_loader(memory, whole_batches=False, **options))


def test_whole_batches_resume_shard_subset_and_carry_indices(fake_root):
    memory = data.cifar10("train", root=fake_root)
    folder = data.cifar10("train", root=fake_root, in_memory=False)
    full = list(data.make_loader(memory, 4, train=True, seed=11, epoch=3, with_index=True))
    resumed = data.make_loader(memory, 4, train=True, seed=11, epoch=3, start_batch=5, with_index=True)
    assert len(resumed) == len(full) - 5 and same_batches(resumed, full[5:])
    resumed.sampler.set_epoch(4)  # the next epoch from its first batch
    assert same_batches(resumed, data.make_loader(folder, 4, train=True, seed=11, epoch=4, workers=2, with_index=True))
    images, labels, indices = full[0]
    assert indices.dtype == torch.int64 and torch.equal(labels, memory.labels[indices])
    for rank in range(3):
        options = dict(batch_size=3, train=True, seed=7, epoch=2, subset=31, num_replicas=3, rank=rank, with_index=True)
        assert same_batches(data.make_loader(memory, **options), data.make_loader(folder, workers=0, **options))


def test_torchvision_copy_gets_whole_batches_too(tmp_path, monkeypatch):
    fake_torchvision_cifar(tmp_path / "cifar10")
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)  # fake md5s
    dataset = data.cifar10("train", root=tmp_path, download=False)
    assert isinstance(dataset, data.TorchvisionCIFAR10)  # the torchvision path itself is unchanged
    fast = data.make_loader(dataset, 4, train=True, seed=2)
    assert isinstance(fast, WholeBatchLoader)
    assert same_batches(fast, data.make_loader(dataset, 4, train=True, seed=2, workers=0, whole_batches=False))


def test_other_data_or_transforms_keep_the_per_image_loader(fake_root):
    plain = data.cifar10("train", root=fake_root, transform=transforms.Compose([transforms.ToTensor()]))
    assert isinstance(plain, CIFAR10InMemory) and plain.pipeline is None
    assert isinstance(data.make_loader(plain, 4, train=True, seed=0, workers=0), torch.utils.data.DataLoader)

    class Numbers(Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return torch.tensor(float(i)), i

    loader = data.make_loader(Numbers(), 4, train=False, seed=0, workers=0, with_index=True)
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert [batch[2].tolist() for batch in loader][:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="whole_batches=True needs CIFAR-10 in memory"):
        data.make_loader(Numbers(), 4, train=True, seed=0, whole_batches=True)


# ---------------------------------------------------------------------------------------------- real data
def need_real_cifar(split: str) -> None:
    if not (config.data_root() / "cifar10" / split).is_dir():
        pytest.skip(f"cifar10/{split} is not in the data root {config.data_root()} (set LABKIT_DATA)")


def test_real_cifar_test_split_decodes_bit_for_bit(monkeypatch):
    need_real_cifar("test")
    monkeypatch.delenv(cifar_memory.CACHE_ENV)  # the user's cache: decoded once for all later runs
    memory = data.cifar10("test")
    assert isinstance(memory, CIFAR10InMemory) and memory.images.shape == (10_000, 32, 32, 3)
    for i, (path, target) in enumerate(memory.samples):
        assert np.array_equal(memory.images[i].numpy(), np.asarray(data.load_rgb(path))), path


def test_real_cifar_train_loader_equals_the_image_folder_loader(monkeypatch):
    need_real_cifar("train")
    monkeypatch.delenv(cifar_memory.CACHE_ENV)
    memory = data.cifar10("train")
    folder = data.cifar10("train", in_memory=False)
    options = dict(batch_size=32, train=True, seed=0, subset=320, epoch=1)
    fast = data.make_loader(memory, **options)
    assert isinstance(fast, WholeBatchLoader) and len(fast) == 10
    assert same_batches(fast, data.make_loader(folder, workers=2, **options))
    assert same_batches(data.make_loader(memory, start_batch=7, **options), list(fast)[7:])


def test_arrays_make_an_in_memory_set_with_the_same_batches():
    images = np.random.default_rng(4).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    dataset = CIFAR10InMemory.from_arrays(images, [i % 10 for i in range(40)])
    assert dataset.pipeline == "train" and len(dataset) == 40 and dataset.classes_present == list(range(10))
    fast = data.make_loader(dataset, 8, train=True, seed=1)
    assert isinstance(fast, WholeBatchLoader)
    assert same_batches(fast, data.make_loader(dataset, 8, train=True, seed=1, workers=0, whole_batches=False))
    with pytest.raises(ValueError, match="uint8"):
        CIFAR10InMemory.from_arrays(images.astype(np.float32), [0] * 40)
    with pytest.raises(ValueError, match="targets"):
        CIFAR10InMemory.from_arrays(images, [0] * 39)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_flip_on_the_device_equals_the_cpu(device):
    images = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    draws = cifar_memory.crop_flip_draws(range(32))
    assert torch.equal(cifar_memory.crop_flip(images.to(device), *draws).cpu(), cifar_memory.crop_flip(images, *draws))


def test_whole_batches_leave_the_thread_count_as_it_was(fake_root):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        list(data.make_loader(data.cifar10("train", root=fake_root), 8, train=True, seed=0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

import gzip
import shutil

import pytest
import torch

from aelight.data import DeviceBatches, MNISTDataModule
from aelight.errors import DataError
from tests.conftest import make_mnist_root, write_idx


def make_dm(root, **kw) -> MNISTDataModule:
    kw = {"data_dir": str(root), "download": False, "val_size": 100, "batch_size": 32, **kw}
    dm = MNISTDataModule(**kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_sizes_seeded_and_pixels_in_unit_range(tiny_data):
    dm = make_dm(tiny_data)
    assert len(dm.splits["train"]) == 500 and len(dm.splits["val"]) == 100 and len(dm.splits["test"]) == 200
    assert set(dm.splits["train"].indices).isdisjoint(dm.splits["val"].indices)
    assert dm.splits["val"].indices == make_dm(tiny_data).splits["val"].indices
    assert dm.splits["val"].indices != make_dm(tiny_data, split_seed=7).splits["val"].indices
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.5  # [0, 1], not the seed's [-1, 1]


@pytest.mark.parametrize("device_resident", [True, False])
def test_train_shuffled_eval_in_order(tiny_data, device_resident):
    dm = make_dm(tiny_data, device_resident=device_resident)
    val_a = torch.cat([x for x, _ in dm.val_dataloader()])
    val_b = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val_a, val_b)
    images, _ = dm.split_tensors("val")
    assert torch.equal(val_a, images.unsqueeze(1).float() / 255)
    train = torch.cat([x for x, _ in dm.train_dataloader()])
    ordered = dm.split_tensors("train")[0].unsqueeze(1).float() / 255
    assert train.shape == ordered.shape and not torch.equal(train, ordered)


def test_fast_and_standard_paths_give_the_same_batches_content(tiny_data):
    fast = make_dm(tiny_data, device_resident=True)
    slow = make_dm(tiny_data, device_resident=False)
    xf, yf = next(iter(fast.test_dataloader()))
    xs, ys = next(iter(slow.test_dataloader()))
    assert torch.allclose(xf, xs) and torch.equal(yf, ys)


def test_other_datasets_use_the_same_code_path(tmp_path):
    make_mnist_root(tmp_path, folder="FashionMNIST")
    dm = make_dm(tmp_path, dataset="fashion_mnist")
    assert len(dm.splits["train"]) == 500


def test_missing_data_offline_names_folder_and_files(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in msg


def test_failed_download_gives_the_missing_data_message(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DataError, match="download failed.*no network"):
        dm.prepare_data()


def test_truncated_idx_file_is_named(tmp_path):
    make_mnist_root(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: wrong size"):
        make_dm(tmp_path)


def test_wrong_magic_number_is_named(tmp_path):
    make_mnist_root(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    with gzip.open(tmp_path / "x.gz", "wb") as f:  # a gzip file where the raw IDX should be
        f.write(path.read_bytes())
    shutil.copy(tmp_path / "x.gz", path)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: wrong magic number"):
        make_dm(tmp_path)


def test_images_and_labels_count_mismatch(tmp_path):
    import numpy as np

    make_mnist_root(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(150, dtype=np.uint8))
    with pytest.raises(DataError, match="200 images but.*150 labels"):
        make_dm(tmp_path)


def test_val_size_too_large(tiny_data):
    with pytest.raises(DataError, match="val_size"):
        make_dm(tiny_data, val_size=600)


# --- the device-resident batches -------------------------------------------------------------


def labelled(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first pixel encodes the sample index (mod 256) and labels = index."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(n) % 256
    return images, torch.arange(n)


def drawn(loader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


def test_each_sample_exactly_once_per_epoch_and_epochs_differ():
    images, labels = labelled(1000)
    epoch = {"n": 0}
    loader = DeviceBatches(images, labels, batch_size=128, shuffle=True, epoch_fn=lambda: epoch["n"])
    first = drawn(loader)
    assert sorted(first.tolist()) == list(range(1000)) and len(loader) == 8
    assert torch.equal(first, drawn(loader))  # same epoch, same order (resumable)
    epoch["n"] = 1
    second = drawn(loader)
    assert sorted(second.tolist()) == list(range(1000)) and not torch.equal(first, second)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and torch.allclose(x[:, 0, 0, 0] * 255, (y % 256).float())


@pytest.mark.parametrize("n,world,batch", [(1000, 2, 128), (257, 2, 128), (1001, 3, 100), (10, 4, 3)])
def test_ddp_shares_are_disjoint_cover_the_split_and_take_equal_steps(n, world, batch):
    images, labels = labelled(n)
    loaders = [
        DeviceBatches(images, labels, batch, shuffle=True, seed=3, rank=r, world_size=world) for r in range(world)
    ]
    shares = [drawn(loader) for loader in loaders]
    everything = torch.cat(shares)
    assert len(everything) == n and len(set(everything.tolist())) == n  # disjoint and covering
    steps = [sum(1 for _ in loader) for loader in loaders]
    assert len(set(steps)) == 1 and steps[0] == len(loaders[0])


@pytest.mark.parametrize("device_resident", [True, False])
def test_deskew_serves_every_split_deskewed_on_both_data_paths(tiny_data, device_resident):
    from aelight.components import deskewed

    plain, skewless = make_dm(tiny_data), make_dm(tiny_data, deskew=True, device_resident=device_resident)
    for split, loader in (("train", skewless.val_dataloader), ("test", skewless.test_dataloader)):
        raw, labels = plain.split_tensors(split)
        images, same_labels = skewless.split_tensors(split)
        assert torch.equal(labels, same_labels) and images.dtype == torch.uint8
        # the components' function on float pixels, to within the uint8 rounding
        expected = deskewed(raw.float().unsqueeze(1) / 255).squeeze(1) * 255
        assert (images.float() - expected).abs().max() <= 0.5 + 1e-3
        assert (images != raw).float().mean() > 0.05  # really moved
    served = torch.cat([x for x, _ in skewless.val_dataloader()])
    assert torch.equal(served, skewless.split_tensors("val")[0].unsqueeze(1).float() / 255)

"""Datasets with labels: shapes, image folders by subfolder, MNIST's IDX files, CIFAR-10's binary files, and the
loop's refusal of items that carry what their dataset does not declare."""

from __future__ import annotations

import gzip
import struct
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from aigc_kit.core.data import BatchStream
from aigc_kit.core.errors import UserError
from aigc_kit.core.run import run

from .conftest import tiny_config


def test_shapes_with_labels_give_each_image_its_kind(builtin_registry):
    data = builtin_registry.create("dataset", "shapes", resolution=16, size=12, labels=True,
                                   kinds=["square", "circle"])
    assert data.info.conditions["label"].classes == ("square", "circle")
    plain = builtin_registry.create("dataset", "shapes", resolution=16, size=12, kinds=["square", "circle"])
    for index in range(12):
        item = data.dataset[index]
        assert torch.equal(item["sample"], plain.dataset[index])  # the same image, with its label beside it
        assert ("square", "circle")[item["label"]] == plain.dataset.kind(index)
    assert not plain.info.conditions


def test_an_image_folders_classes_are_its_subfolders_sorted_as_torchvision_sorts_them(builtin_registry, tmp_path):
    colours = {"zebra": (0, 255, 0), "apple": (255, 0, 0), "Bee": (0, 0, 255)}  # one channel lit per class
    for name, colour in colours.items():
        (tmp_path / name / "deeper").mkdir(parents=True)
        Image.new("RGB", (20, 20), colour).save(tmp_path / name / "a.png")
        Image.new("RGB", (20, 20), colour).save(tmp_path / name / "deeper" / "b.png")
    Image.new("RGB", (20, 20), "black").save(tmp_path / "loose.png")
    with pytest.warns(UserWarning, match="1 image.* directly in .* belong to no class subfolder"):
        data = builtin_registry.create("dataset", "image-folder", root=str(tmp_path), resolution=16,
                                       classes="subfolders")
    classes = data.info.conditions["label"].classes
    assert classes == ("Bee", "apple", "zebra")  # sorted() as torchvision's ImageFolder: capitals first
    assert len(data.dataset) == 6
    for index in range(6):
        item = data.dataset[index]
        lit = int(item["sample"].mean(dim=(1, 2)).argmax())
        assert colours[classes[item["label"]]][lit] == 255  # the label is the class of the picture's folder


def idx(kind: int, shape: tuple[int, ...], values: np.ndarray) -> bytes:
    return struct.pack(">I" + "I" * len(shape), kind, *shape) + values.astype(np.uint8).tobytes()


def write_mnist(folder, count: int = 6, prefix: str = "train", gz: bool = False):
    images = np.arange(count * 28 * 28).reshape(count, 28, 28) % 256
    labels = np.arange(count) % 10
    for name, data in ((f"{prefix}-images-idx3-ubyte", idx(2051, (count, 28, 28), images)),
                       (f"{prefix}-labels-idx1-ubyte", idx(2049, (count,), labels))):
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as handle:
                handle.write(data)
        else:
            (folder / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_files_read_back_with_their_labels(builtin_registry, tmp_path, gz):
    images, labels = write_mnist(tmp_path, gz=gz)
    data = builtin_registry.create("dataset", "mnist", root=str(tmp_path), resolution=28)
    assert data.info.shape == (1, 28, 28) and data.info.conditions["label"].classes[3] == "3"
    assert len(data.dataset) == 6
    item = data.dataset[4]
    assert item["label"] == labels[4]
    assert torch.allclose(item["sample"][0], torch.from_numpy(images[4] / 127.5 - 1.0).float(), atol=1e-6)
    fashion = builtin_registry.create("dataset", "mnist", root=str(tmp_path), names="fashion", resolution=32)
    assert fashion.info.conditions["label"].classes[9] == "Ankle boot" and fashion.dataset[0]["sample"].shape == (
        1, 32, 32)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda folder: (folder / "train-images-idx3-ubyte").write_bytes(
        (folder / "train-images-idx3-ubyte").read_bytes()[:-10]), "truncated"),
    (lambda folder: (folder / "train-images-idx3-ubyte").write_bytes(b"GIF89a" + b"\0" * 40),
     "not an IDX image file"),
    (lambda folder: (folder / "train-labels-idx1-ubyte").write_bytes(idx(2049, (6,), np.array([0, 1, 2, 3, 4, 11]))),
     "a label of 11"),
    (lambda folder: (folder / "train-labels-idx1-ubyte").write_bytes(idx(2049, (5,), np.arange(5))),
     "5 labels for 6 images"),
    (lambda folder: (folder / "train-labels-idx1-ubyte").unlink(), "no train-labels-idx1-ubyte"),
], ids=["truncated", "foreign", "label-range", "count", "missing"])
def test_a_damaged_or_foreign_idx_file_is_a_user_error_naming_it(builtin_registry, tmp_path, damage, message):
    write_mnist(tmp_path)
    damage(tmp_path)
    with pytest.raises(UserError, match=message) as error:
        builtin_registry.create("dataset", "mnist", root=str(tmp_path))
    assert str(tmp_path) in str(error.value)


def write_cifar(path, labels: list[int]):
    records = []
    for index, label in enumerate(labels):
        red, green, blue = (np.full(1024, value, dtype=np.uint8) for value in (index * 10, 100, 200))
        records.append(bytes([label]) + red.tobytes() + green.tobytes() + blue.tobytes())
    path.write_bytes(b"".join(records))


def test_cifar10_binary_records_read_back_channel_by_channel(builtin_registry, tmp_path):
    write_cifar(tmp_path / "data_batch_1.bin", [3, 7])
    write_cifar(tmp_path / "data_batch_2.bin", [9])
    data = builtin_registry.create("dataset", "cifar10", root=str(tmp_path))
    assert len(data.dataset) == 3 and data.info.conditions["label"].classes[3] == "cat"
    item = data.dataset[1]
    assert item["label"] == 7
    pixels = (item["sample"] + 1) * 127.5
    assert [round(float(pixels[channel].mean())) for channel in range(3)] == [10, 100, 200]
    assert data.dataset[2]["label"] == 9
    (tmp_path / "batches.meta.txt").write_text("\n".join(f"c{index}" for index in range(10)) + "\n")
    assert builtin_registry.create("dataset", "cifar10", root=str(tmp_path)).info.conditions["label"].classes[0] == "c0"


def test_a_pickled_or_cut_cifar10_file_is_refused_naming_it(builtin_registry, tmp_path):
    import pickle

    (tmp_path / "data_batch_1.bin").write_bytes(pickle.dumps({"data": [1, 2, 3]}))  # the Python version: never loaded
    with pytest.raises(UserError, match="not a whole number of CIFAR-10 records") as error:
        builtin_registry.create("dataset", "cifar10", root=str(tmp_path))
    assert "data_batch_1.bin" in str(error.value)


def test_a_gaussian_mixture_labels_each_point_with_its_mode(builtin_registry):
    data = builtin_registry.create("dataset", "gaussian-mixture", layout="ring", size=200, labels=True)
    items = data.dataset.__getitems__(list(range(200)))
    centres = torch.from_numpy(data.dataset.centres).float()
    nearest = torch.cdist(items["sample"], centres).argmin(1)
    assert torch.equal(nearest, items["label"]) and data.info.conditions["label"].count == 8


class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.zeros(2), index % 2


def test_a_dataset_of_bare_pairs_is_a_user_error_not_silently_stripped_of_its_labels():
    stream = BatchStream(Pairs(), 4, seed=0, device=torch.device("cpu"), dataset_name="pairs")
    with pytest.raises(UserError, match="dataset 'pairs' yields list items") as error:
        next(stream)
    assert "{'sample': image, 'label': label}" in error.value.hint


class Undeclared(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        return {"sample": torch.zeros(2), "label": 1, "colour": 2}


def test_conditions_the_info_does_not_declare_are_a_user_error():
    stream = BatchStream(Undeclared(), 4, seed=0, device=torch.device("cpu"), conditions=["label"],
                         dataset_name="odd")
    with pytest.raises(UserError, match="yields the conditions colour, label, but its info declares label"):
        next(stream)


PAIRS_PLUGIN = textwrap.dedent('''
    import torch
    from aigc_kit.core.plugin_api import ComponentSpec, DatasetBundle, DatasetInfo, hookimpl

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 64
        def __getitem__(self, index):
            return torch.zeros(3, 16, 16), index % 3

    @hookimpl
    def aigc_register_datasets():
        return [ComponentSpec("pairs", lambda options: DatasetBundle(Pairs(), DatasetInfo((3, 16, 16))), "Pairs.")]
''')


def test_a_run_on_a_dataset_of_pairs_stops_with_one_message_naming_it(builtin_registry, write_config, tmp_path):
    (tmp_path / "pairs_plugin.py").write_text(PAIRS_PLUGIN)
    config = tiny_config(plugins=["pairs_plugin.py"])
    config["data"] = {"name": "pairs"}
    with pytest.raises(UserError, match="dataset 'pairs' yields list items"):
        run(write_config(config), builtin_registry, output=tmp_path / "run")

"""The shapes and image-folder datasets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from aigc_kit.core.errors import UserError


def test_shapes_are_deterministic_for_a_seed_and_in_range(builtin_registry):
    first = builtin_registry.create("dataset", "shapes", resolution=24, size=10, seed=3)
    again = builtin_registry.create("dataset", "shapes", resolution=24, size=10, seed=3)
    other = builtin_registry.create("dataset", "shapes", resolution=24, size=10, seed=4)
    assert first.info.shape == (3, 24, 24) and len(first.dataset) == 10
    images = torch.stack([first.dataset[i] for i in range(10)])
    assert images.shape == (10, 3, 24, 24)
    assert torch.equal(images, torch.stack([again.dataset[i] for i in range(10)]))
    assert not torch.equal(images, torch.stack([other.dataset[i] for i in range(10)]))
    assert images.min() >= -1 and images.max() <= 1
    assert len({tuple(image.flatten()[:5].tolist()) for image in images}) == 10  # varied


def test_shapes_vary_in_kind_and_grey_has_one_channel(builtin_registry):
    bundle = builtin_registry.create("dataset", "shapes", resolution=16, channels=1, size=200)
    assert bundle.dataset[0].shape == (1, 16, 16)
    kinds = [bundle.dataset.kind(i) for i in range(200)]
    assert set(kinds) == {"circle", "square", "triangle"}
    assert min(kinds.count(k) for k in set(kinds)) > 40
    with pytest.raises(UserError, match="channels"):
        builtin_registry.create("dataset", "shapes", channels=2)



@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_kept_after_the_first_read_are_the_images_drawn_and_large_sets_are_drawn_every_time(
        builtin_registry, monkeypatch, channels):
    from aigc_kit.plugins.datasets import shapes

    drawn = []
    draw = shapes.draw_shape
    monkeypatch.setattr(shapes, "draw_shape", lambda *args, **kwargs: drawn.append(args[0]) or draw(*args, **kwargs))
    bundle = builtin_registry.create("dataset", "shapes", resolution=16, channels=channels, size=6, labels=True)
    first = [bundle.dataset[i] for i in range(6)]
    again = [bundle.dataset[i] for i in range(6)]
    assert drawn == list(range(6))  # the second read draws nothing
    for index, (item, kept) in enumerate(zip(first, again, strict=True)):
        assert torch.equal(item["sample"], kept["sample"]) and item["label"] == kept["label"]
        image, kind = draw(index, 0, 16)
        if channels == 1:
            image = image.convert("L")
        assert torch.equal(kept["sample"], shapes.to_tensor(image)) and shapes.KINDS[kept["label"]] == kind

    monkeypatch.setattr(shapes, "CACHE_BYTES", 6 * 16 * 16 * channels - 1)  # one byte short of the whole set
    bundle = builtin_registry.create("dataset", "shapes", resolution=16, channels=channels, size=6)
    drawn.clear()
    for _ in range(2):
        [bundle.dataset[i] for i in range(6)]
    assert drawn == list(range(6)) * 2

def test_image_folder_resizes_crops_and_skips_unreadable_files(builtin_registry, tmp_path):
    (tmp_path / "nested").mkdir()
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 20:60] = 255  # a white centre band that survives the center crop
    Image.fromarray(wide).save(tmp_path / "nested" / "wide.png")
    Image.fromarray(np.full((30, 30, 3), 128, dtype=np.uint8)).save(tmp_path / "grey.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = builtin_registry.create("dataset", "image-folder", root=str(tmp_path), resolution=16)
    assert any("1 unreadable image file(s)" in str(w.message) for w in caught)
    assert len(bundle.dataset) == 2 and bundle.info.shape == (3, 16, 16)
    wide_image = bundle.dataset[[p.name for p in bundle.dataset.files].index("wide.png")]
    assert wide_image.shape == (3, 16, 16)
    # The 40x80 image is cropped to its centre 40x40, the white band: no black columns remain.
    assert wide_image.mean() > 0.95 and wide_image.min() > 0.8


def test_image_folder_errors_name_the_field(builtin_registry, tmp_path):
    with pytest.raises(UserError) as caught:
        builtin_registry.create("dataset", "image-folder", root=str(tmp_path))
    assert caught.value.field == "data.root" and "no readable images" in str(caught.value)
    with pytest.raises(UserError, match="no such folder"):
        builtin_registry.create("dataset", "image-folder", root=str(tmp_path / "missing"))


def test_black_backgrounds_keep_the_same_shapes(builtin_registry):
    varied = builtin_registry.create("dataset", "shapes", resolution=16, size=20)
    black = builtin_registry.create("dataset", "shapes", resolution=16, size=20, backgrounds="black")
    corners = torch.stack([black.dataset[i][:, [0, 0, -1, -1], [0, -1, 0, -1]] for i in range(20)])
    assert torch.all(corners == -1)  # shapes never reach the corners
    assert [varied.dataset.kind(i) for i in range(20)] == [black.dataset.kind(i) for i in range(20)]
    assert not torch.equal(varied.dataset[0], black.dataset[0])


class WorkerPids(torch.utils.data.Dataset):
    """Each sample is the id of the process that loaded it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        import os

        return torch.tensor([os.getpid(), index])


def test_data_workers_start_once_and_serve_every_epoch_in_the_same_order_as_the_main_process():
    from aigc_kit.core.data import BatchStream

    with_workers = BatchStream(WorkerPids(), 4, seed=0, device=torch.device("cpu"), workers=1)
    batches = [next(with_workers).samples for _ in range(6)]  # three epochs of two batches
    assert len({int(pid) for batch in batches for pid in batch[:, 0]}) == 1  # one worker process throughout
    assert with_workers.position() == {"epoch": 2, "consumed": 8}
    in_process = BatchStream(WorkerPids(), 4, seed=0, device=torch.device("cpu"))
    assert [batch[:, 1].tolist() for batch in batches] == [next(in_process).samples[:, 1].tolist() for _ in range(6)]
    resumed = BatchStream(WorkerPids(), 4, seed=0, device=torch.device("cpu"), position={"epoch": 1, "consumed": 4})
    assert [next(resumed).samples[:, 1].tolist() for _ in range(3)] == [batch[:, 1].tolist() for batch in batches[3:]]

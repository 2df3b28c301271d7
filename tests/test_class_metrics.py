"""Metrics of conditional models: class agreement (does a sample show the class it was asked for?) and FID per
class (intra-FID). `aigc-kit eval` of a conditional run and its export: tests/test_conditional.py."""

from __future__ import annotations

import pytest
import torch

from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import Condition, DatasetBundle, DatasetInfo
from aigc_kit.plugins.datasets.shapes import ShapesDataset
from aigc_kit.testing import isolated_registry

from .conftest import CLASSES

pytestmark = pytest.mark.usefixtures("cache")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_KIT_CACHE", str(tmp_path / "cache"))


def labelled(size: int = 300, resolution: int = 16) -> DatasetBundle:
    dataset = ShapesDataset(resolution, 3, size, seed=3, kinds=tuple(CLASSES), backgrounds="black", labels=True)
    return DatasetBundle(dataset, DatasetInfo((3, resolution, resolution), conditions={"label": Condition(
        classes=tuple(CLASSES))}))


def batch_of(data: DatasetBundle, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [data.dataset[index] for index in range(count)]
    return torch.stack([item["sample"] for item in items]), torch.tensor([item["label"] for item in items])


def metric(name: str, data: DatasetBundle, **options):
    registry = isolated_registry()
    return registry.build("metric", name, registry.options("metric", name, options), data=data)


def test_class_agreement_is_high_for_the_true_labels_and_low_for_wrong_ones():
    data = labelled()
    images, labels = batch_of(data, 240)
    right = metric("class-agreement", data)
    right.update(images, conditions={"label": labels})
    values = right.compute()
    assert values["agreement"] > 0.9
    assert set(values) == {"agreement", *(f"agreement/{name}" for name in CLASSES)}
    assert all(values[f"agreement/{name}"] > 0.85 for name in CLASSES)
    wrong = metric("class-agreement", data)
    wrong.update(images, conditions={"label": (labels + 1) % 3})
    assert wrong.compute()["agreement"] < 0.1


def test_class_agreement_maps_the_data_classes_to_the_classifier_by_name():
    reordered = ("triangle", "circle", "square")
    dataset = ShapesDataset(16, 3, 120, seed=3, kinds=reordered, backgrounds="black", labels=True)
    data = DatasetBundle(dataset, DatasetInfo((3, 16, 16), conditions={"label": Condition(classes=reordered)}))
    images, labels = batch_of(data, 120)
    agreement = metric("class-agreement", data)
    agreement.update(images, conditions={"label": labels})
    assert agreement.compute()["agreement"] > 0.9
    unknown = DatasetBundle(dataset, DatasetInfo((3, 16, 16), conditions={"label": Condition(classes=("cat", "dog"))}))
    with pytest.raises(UserError, match="knows circle, square, triangle, not cat, dog"):
        metric("class-agreement", unknown)


def test_a_user_classifier_scores_each_class_in_the_data_order_and_a_wrong_width_is_refused(tmp_path):
    class Always(torch.nn.Module):
        def __init__(self, width: int, chosen: int) -> None:
            super().__init__()
            self.width, self.chosen = width, chosen

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.full(images.shape[:1], self.chosen), self.width).float()

    torch.jit.save(torch.jit.script(Always(3, 2)), tmp_path / "triangles.pt")
    torch.jit.save(torch.jit.script(Always(5, 0)), tmp_path / "five.pt")
    data = labelled(60)
    images, labels = batch_of(data, 60)
    agreement = metric("class-agreement", data, classifier=str(tmp_path / "triangles.pt"))
    agreement.update(images, conditions={"label": labels})
    values = agreement.compute()
    assert values["agreement"] == pytest.approx((labels == 2).float().mean().item())
    assert values["agreement/triangle"] == 1.0 and values["agreement/circle"] == 0.0
    five = metric("class-agreement", data, classifier=str(tmp_path / "five.pt"))
    with pytest.raises(UserError, match=r"scores of shape \(60, 5\)") as raised:
        five.update(images, conditions={"label": labels})
    assert "circle, square, triangle" in raised.value.expected
    with pytest.raises(UserError, match="no such classifier"):
        metric("class-agreement", data, classifier=str(tmp_path / "missing.onnx"))


def test_class_agreement_needs_labelled_data_and_labelled_samples():
    unlabelled = DatasetBundle(ShapesDataset(16, 3, 8, seed=0), DatasetInfo((3, 16, 16)))
    with pytest.raises(UserError, match="has no class labels"):
        metric("class-agreement", unlabelled)
    data = labelled(8)
    with pytest.raises(UserError, match="sampled without labels"):
        metric("class-agreement", data).update(batch_of(data, 8)[0])


def test_intra_fid_sees_wrong_labels_that_the_overall_fid_cannot():
    data = labelled(600)
    images, labels = batch_of(data, 600)
    fakes = images[300:]  # other drawings of the same classes
    values = {}
    for case, given in (("right", labels[300:]), ("wrong", (labels[300:] + 1) % 3)):
        fid = metric("fid", data, real_samples=300, per_class=True)
        fid.update(fakes, conditions={"label": given})
        values[case] = fid.compute()
    assert values["right"]["fid"] == pytest.approx(values["wrong"]["fid"])  # the same samples
    assert set(values["right"]) == {"fid", "intra_fid", *(f"fid/{name}" for name in CLASSES)}
    assert values["right"]["intra_fid"] == pytest.approx(sum(values["right"][f"fid/{c}"] for c in CLASSES) / 3)
    assert values["wrong"]["intra_fid"] > 5 * values["right"]["intra_fid"]
    with pytest.raises(UserError, match="sampled without labels"):
        metric("fid", data, real_samples=300, per_class=True).update(fakes)

"""Class-conditional models: the networks take labels, guidance mixes the conditional and unconditional
predictions, and exports take ``label`` (and ``guidance_scale``) as inputs that `aigc-kit generate` feeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from aigc_kit.cli import cli
from aigc_kit.core.errors import UserError
from aigc_kit.core.run import run
from aigc_kit.core.trained import export, load_trained
from aigc_kit.exporters.runtime import OnnxGenerator, draw_noise
from aigc_kit.plugins.dcgan.networks import Discriminator, Generator
from aigc_kit.plugins.diffusion.unet import UNet
from aigc_kit.testing import isolated_registry

from .conftest import CLASSES, tiny_config, tiny_unet_config

LABELLED = {"name": "shapes", "resolution": 16, "channels": 3, "size": 64, "labels": True}


@pytest.fixture(scope="module")
def registry():
    return isolated_registry()


@pytest.fixture(scope="module")
def cgan_run(tmp_path_factory, registry):
    folder = tmp_path_factory.mktemp("cgan")
    (folder / "run.yaml").write_text(json.dumps(tiny_config(data=LABELLED)))
    run(folder / "run.yaml", registry, output=folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory, registry):
    folder = tmp_path_factory.mktemp("guided")
    config = tiny_unet_config(data=LABELLED, sampler={"name": "ddim", "steps": 3, "guidance_scale": 2.0})
    (folder / "run.yaml").write_text(json.dumps(config))
    run(folder / "run.yaml", registry, output=folder / "run")
    return folder / "run"


# -- the networks --------------------------------------------------------------------------------------------------


def test_a_conditional_generator_draws_other_images_for_other_classes_and_needs_a_label():
    generator = Generator(latent_dim=8, width=8, channels=3, resolution=16, classes=3).eval()
    z = torch.randn(4, 8)
    first, second = generator(z, label=torch.zeros(4, dtype=torch.long)), generator(z, label=torch.ones(4).long())
    assert first.shape == (4, 3, 16, 16)
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match="class-conditional: pass label="):
        generator(z)


def test_the_discriminator_sees_one_hot_class_maps_and_adds_the_projection_of_its_pooled_features():
    discriminator = Discriminator(width=8, channels=3, resolution=16, classes=3).eval()
    images = torch.randn(2, 3, 16, 16)
    label = torch.tensor([0, 2])
    maps = torch.zeros(2, 3, 16, 16)
    maps[0, 0], maps[1, 2] = 1, 1
    features = discriminator.layers[:-1](torch.cat([images, maps], dim=1))
    plain = discriminator.layers[-1](features).reshape(-1)
    projection = (discriminator.embedding(label) * features.sum(dim=(2, 3))).sum(dim=1)
    torch.testing.assert_close(discriminator(images, label=label), plain + projection)


def test_a_unet_label_of_minus_one_is_its_null_class_and_training_drops_labels_to_it():
    torch.manual_seed(0)
    unet = UNet(3, 16, width=8, channel_multipliers=(1, 2), blocks_per_level=1, attention_resolutions=(8,),
                norm_groups=4, classes=3, class_dropout=0.5)
    torch.nn.init.normal_(unet.output[-1].weight)  # not the zero start, so that the output shows the class
    x, t = torch.randn(1, 3, 16, 16).expand(400, -1, -1, -1), torch.full((400,), 500)
    unet.eval()
    with torch.no_grad():
        null = unet(x[:1], t[:1], label=torch.tensor([-1]))
        kept = unet(x[:1], t[:1], label=torch.tensor([1]))
        unet.train()
        unet.dropout = 0.0
        for module in unet.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        trained = unet(x, t, label=torch.ones(400, dtype=torch.long))
    assert not torch.allclose(null, kept)
    # a batch of 400 rounds differently from a batch of one (2e-5 on outputs near 17, which differ by 16 between
    # the null class and the label)
    is_null = [torch.allclose(row, null[0], atol=1e-4) for row in trained]
    assert all(is_null[i] or torch.allclose(trained[i], kept[0], atol=1e-4) for i in range(400))
    assert 150 < sum(is_null) < 250  # about half, as class_dropout 0.5 asks


class StubDenoiser(torch.nn.Module):
    """Predicts label + 1 everywhere, and 0 for "no class": guided output is then w (label + 1)."""

    def forward(self, x, t, label=None):
        value = torch.where(label < 0, torch.zeros_like(label), label + 1).float()
        return value.reshape(-1, 1, 1, 1).expand_as(x)


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_classifier_free_guidance_is_the_unconditional_plus_w_times_the_difference(registry, scale):
    sampler = registry.create("sampler", "ddim", steps=2, guidance_scale=scale)
    x = torch.zeros(3, 1, 4, 4)
    label = torch.tensor([0, 1, 2])
    guided = sampler.guided(StubDenoiser(), x, torch.full((3,), 10), {"label": label}, None)
    torch.testing.assert_close(guided[:, 0, 0, 0], scale * (label + 1).float())
    traced_scale = sampler.guided(StubDenoiser(), x, torch.full((3,), 10), {"label": label}, torch.tensor(scale))
    torch.testing.assert_close(traced_scale, guided)  # a graph input takes the batched path, to the same numbers


# -- training and sampling -------------------------------------------------------------------------------------------


def test_a_run_on_labelled_data_trains_a_conditional_model_with_one_grid_row_per_class(cgan_run, registry):
    trained = load_trained(cgan_run, registry)
    generator = trained.components.model.networks["generator"]
    assert generator.classes == 3 and generator.layers[1].gain.num_embeddings == 3  # class-conditional BatchNorm
    assert trained.components.model.conditions["label"].classes == tuple(CLASSES)
    grid = Image.open(max((cgan_run / "samples").glob("*.png")))
    assert grid.height == 2 + 3 * 18  # sample_count 4 per class would not fit; one row per class of 16 + 2


# -- export ----------------------------------------------------------------------------------------------------------


def test_a_conditional_generator_exports_with_a_label_input_that_matches_pytorch_per_class(cgan_run, registry,
                                                                                           tmp_path):
    path = tmp_path / "g.onnx"
    export(cgan_run, registry, out=path)
    trained = load_trained(cgan_run, registry)
    network = trained.network.eval()
    run_onnx = registry.create("exporter", "onnx").load(str(path))
    z = torch.randn(3, 8)
    outputs = []
    for label in range(3):
        labels = torch.full((3,), label)
        expected = network(z, label=labels).detach().numpy()
        actual = run_onnx(z.numpy(), label=labels.numpy())
        np.testing.assert_allclose(actual, expected, atol=1e-4)
        outputs.append(actual)
    assert not np.allclose(outputs[0], outputs[1])
    spec = next(spec for spec in OnnxGenerator(path).metadata["inputs"] if spec["name"] == "label")
    assert spec["classes"] == CLASSES and spec["dtype"] == "int64" and spec["shape"] == ["batch"]


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["loop", "unrolled"])
def test_a_guided_sampler_exports_with_label_and_guidance_inputs_that_match_pytorch(guided_run, registry, tmp_path,
                                                                                    graph):
    path = tmp_path / f"{graph}.onnx"
    report = export(guided_run, registry, out=path, options={"sampler_graph": graph})
    assert {check.get("guidance_scale") for check in report["checks"]} >= {0.0, 4.0}  # validated beyond the default
    trained = load_trained(guided_run, registry)
    network, sampler = trained.network.eval(), trained.components.sampler
    run_onnx = registry.create("exporter", "onnx").load(str(path))
    noise = torch.randn(2, 3, 16, 16)
    label = torch.tensor([0, 2])
    for scale in (None, 0.0, 5.0):
        expected = sampler.sample(network, noise, conditions={"label": label}, guidance_scale=scale).numpy()
        given = {} if scale is None else {"guidance_scale": np.float32(scale)}
        np.testing.assert_allclose(run_onnx(noise.numpy(), label=label.numpy(), **given), expected, atol=1e-3)
    generator = OnnxGenerator(path)
    assert generator.guidance_scale == 2.0 and generator.classes == CLASSES


@pytest.mark.slow
def test_an_int8_guided_sampler_calibrates_with_labels_and_still_follows_them(guided_run, registry, tmp_path):
    path = tmp_path / "q.onnx"
    report = export(guided_run, registry, out=path, options={"precision": "int8"})
    assert report["sampler_graph"] == "unrolled"
    generator = OnnxGenerator(path)
    assert generator.classes == CLASSES and generator.guidance_scale == 2.0


@pytest.mark.slow
def test_a_denoiser_export_takes_minus_one_for_no_class(guided_run, registry, tmp_path):
    path = tmp_path / "d.onnx"
    export(guided_run, registry, out=path, options={"what": "denoiser"})
    trained = load_trained(guided_run, registry)
    network = trained.network.eval()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, t, label = torch.randn(2, 3, 16, 16), torch.tensor([900, 10]), torch.tensor([-1, 1])
    actual = session.run(None, {"x_t": x.numpy(), "t": t.numpy(), "label": label.numpy()})[0]
    np.testing.assert_allclose(actual, network(x, t, label=label).detach().numpy(), atol=1e-4)


# -- the runtime and `aigc-kit generate` ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cgan_onnx(cgan_run, registry, tmp_path_factory):
    path = tmp_path_factory.mktemp("cgan-onnx") / "g.onnx"
    export(cgan_run, registry, out=path)
    return path


def test_the_runtime_takes_a_class_by_name_or_index_and_keeps_the_noise_of_the_seed(cgan_onnx):
    generator = OnnxGenerator(cgan_onnx)
    by_name = generator.generate(3, seed=4, labels="triangle")
    np.testing.assert_array_equal(by_name, generator.generate(3, seed=4, labels=2))
    np.testing.assert_array_equal(by_name, generator.generate(3, seed=4, labels=["triangle"] * 3))
    assert not np.array_equal(by_name, generator.generate(3, seed=4, labels="square"))
    with pytest.raises(UserError, match="no such class") as raised:
        generator.generate(1, labels="hexagon")
    assert "circle, square, triangle" in raised.value.expected
    with pytest.raises(UserError, match="2 labels for 3 images"):
        generator.generate(3, labels=[0, 1])
    with pytest.raises(UserError, match="no guidance scale"):
        generator.generate(1, guidance=2.0)


def test_generate_label_all_draws_every_class_in_its_own_row_from_the_same_noise(cgan_onnx, tmp_path):
    result = CliRunner().invoke(cli, ["generate", str(cgan_onnx), "-n", "2", "--label", "all", "--seed", "3",
                                      "--out", str(tmp_path / "grid.png"), "--out-dir", str(tmp_path / "each")])
    assert result.exit_code == 0, result.output
    assert "generated 6 images" in result.output and "every class (circle, square, triangle)" in result.output
    grid = Image.open(tmp_path / "grid.png")
    assert (grid.width, grid.height) == (2 + 2 * 18, 2 + 3 * 18)
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 6
    generator = OnnxGenerator(cgan_onnx)
    for label in range(3):
        expected = generator.generate(2, seed=3, labels=label)
        for column in range(2):
            np.testing.assert_array_equal(np.asarray(Image.open(files[2 * label + column])), expected[column])


def test_generate_refuses_unknown_labels_and_guidance_for_a_gan_with_exit_status_2(cgan_onnx, gan_onnx, tmp_path):
    out = str(tmp_path / "g.png")
    unknown = CliRunner().invoke(cli, ["generate", str(cgan_onnx), "--label", "hexagon", "--out", out])
    assert unknown.exit_code == 2 and "--label: no such class" in unknown.output
    assert "circle, square, triangle" in unknown.output and "Traceback" not in unknown.output
    guided = CliRunner().invoke(cli, ["generate", str(cgan_onnx), "--guidance", "3", "--out", out])
    assert guided.exit_code == 2 and "--guidance" in guided.output
    plain = CliRunner().invoke(cli, ["generate", str(gan_onnx), "--label", "0", "--out", out])
    assert plain.exit_code == 2 and "takes no class labels" in plain.output
    mixed = CliRunner().invoke(cli, ["generate", str(cgan_onnx), "--label", "all", "--label", "0", "--out", out])
    assert mixed.exit_code == 2


@pytest.fixture(scope="module")
def gan_onnx(registry, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    (folder / "run.yaml").write_text(json.dumps(tiny_config(sampler={"name": "normal", "truncation": 0.5})))
    run(folder / "run.yaml", registry, output=folder / "run")
    export(folder / "run", registry, out=folder / "g.onnx")
    return folder / "g.onnx"


def test_an_export_records_its_prior_and_the_runtime_draws_from_it(gan_onnx):
    generator = OnnxGenerator(gan_onnx)
    assert generator.prior == {"kind": "normal", "truncation": 0.5}
    z = generator.feeds(64, np.random.default_rng(0))["z"]
    assert np.abs(z).max() <= 0.5 and z.std() > 0.2  # truncated, not squashed


def test_sphere_noise_has_the_radius_it_asks_for():
    z = draw_noise({"kind": "sphere"}, [5, 4, 4], np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(z.reshape(5, -1), axis=1), 4.0, rtol=1e-5)
    z = draw_noise({"kind": "sphere", "radius": 2.0}, [3, 9], np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 2.0, rtol=1e-5)


def test_eval_of_a_conditional_run_and_of_its_export_reports_agreement_per_class(cgan_run, cgan_onnx, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("AIGC_KIT_CACHE", str(tmp_path / "cache"))
    for source in (cgan_run, cgan_onnx):
        out = tmp_path / f"{source.name}.json"
        result = CliRunner().invoke(cli, ["eval", str(source), "--metric", "class-agreement", "--metric", "fid",
                                          "--option", "fid.per_class=true", "--option", "fid.real_samples=64",
                                          "-n", "60", "--out", str(out)])
        assert result.exit_code == 0, result.output
        values = json.loads(out.read_text())["values"]
        assert 0 <= values["class-agreement/agreement"] <= 1
        assert {f"class-agreement/agreement/{name}" for name in CLASSES} <= set(values)
        assert "fid/intra_fid" in values


def test_eval_samples_a_guided_run_at_the_guidance_asked_for_and_refuses_it_for_a_gan(guided_run, cgan_run, cgan_onnx,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_KIT_CACHE", str(tmp_path / "cache"))
    reports = {}
    for scale in ("0", "5"):
        out = tmp_path / f"w{scale}.json"
        result = CliRunner().invoke(cli, ["eval", str(guided_run), "--metric", "fid", "--option", "fid.real_samples=64",
                                          "-n", "32", "--guidance", scale, "--out", str(out)])
        assert result.exit_code == 0, result.output
        reports[scale] = json.loads(out.read_text())
    assert reports["0"]["guidance_scale"] == 0 and reports["5"]["guidance_scale"] == 5
    assert reports["0"]["values"]["fid/fid"] != reports["5"]["values"]["fid/fid"]
    for source in (cgan_run, cgan_onnx):
        refused = CliRunner().invoke(cli, ["eval", str(source), "--metric", "fid", "--guidance", "2",
                                           "--out", str(tmp_path / "no.json")])
        assert refused.exit_code == 2 and "takes no guidance scale" in refused.output, refused.output
    too_much = CliRunner().invoke(cli, ["eval", str(guided_run), "--metric", "fid", "--guidance", "1000",
                                        "--out", str(tmp_path / "no.json")])
    assert too_much.exit_code == 2 and "from 0 to 100" in too_much.output


def test_validate_says_a_config_on_labelled_data_trains_a_class_conditional_model(write_config):
    labelled = CliRunner().invoke(cli, ["validate", str(write_config(tiny_config(data=LABELLED)))])
    assert labelled.exit_code == 0, labelled.output
    assert "class-conditional on 3 classes: circle, square, triangle" in labelled.output
    plain = CliRunner().invoke(cli, ["validate", str(write_config(tiny_config(data=LABELLED))), "--set",
                                     "model.conditional=false"])
    assert plain.exit_code == 0 and "class-conditional" not in plain.output

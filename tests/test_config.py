"""Config validation: every user mistake gives exit status 2 and one message naming file and field."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigc_kit.cli import cli
from aigc_kit.core.config import apply_overrides, load_config
from aigc_kit.core.errors import UserError

from .conftest import tiny_config


def validate(path, *args):
    return CliRunner().invoke(cli, ["validate", str(path), *args])


def test_a_good_config_validates_and_fills_plugin_defaults(write_config, builtin_registry):
    loaded = load_config(write_config(tiny_config()), builtin_registry)
    resolved = loaded.resolved()
    assert resolved["model"]["latent_dim"] == 8
    assert resolved["loss"] == {"name": "gan-bce", "discriminator_steps": 1, "discriminator_lr": 2e-4,
                                "generator_lr": 2e-4, "beta1": 0.5, "beta2": 0.999, "r1_gamma": 0.0}
    assert resolved["train"]["ema"]["decay"] == 0.999


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda c: c["train"].update(stesp=5), "train.stesp", "did you mean 'steps'"),
        (lambda c: c["train"].update(steps="many"), "train.steps", "integer"),
        (lambda c: c["train"].update(steps=0), "train.steps", "greater than 0"),
        (lambda c: c["model"].update(name="dcgna"), "model.name", "did you mean 'dcgan'"),
        (lambda c: c["model"].update(widht=3), "model.widht", "did you mean 'width'"),
        (lambda c: c["model"].update(resolution=24), "model.resolution", "power of two"),
        (lambda c: c["data"].update(size=-1), "data.size", "greater than or equal to 1"),
        (lambda c: c.pop("loss"), "loss", "required"),
        (lambda c: c.update(device="gpu"), "device", "cuda"),
        (lambda c: c.update(extra_section=1), "extra_section", "unknown key"),
        (lambda c: c["train"].update(precision="fp8"), "train.precision", "fp32"),
    ],
)
def test_each_mistake_names_the_file_and_field(write_config, mutate, field, words):
    config = tiny_config()
    mutate(config)
    path = write_config(config)
    result = validate(path)
    assert result.exit_code == 2, result.output
    assert f"{path}: {field}:" in result.output
    assert words in result.output
    assert "Traceback" not in result.output


def test_missing_file_and_bad_yaml_are_user_errors(tmp_path):
    result = validate(tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "file not found" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\nmodel: {")
    result = validate(bad)
    assert result.exit_code == 2 and "invalid YAML (line" in result.output and str(bad) in result.output


def test_overrides_set_nested_fields_and_parse_values():
    data = apply_overrides({"train": {"steps": 5}}, ["train.steps=7", "train.ema.enabled=false", "seed=3"])
    assert data == {"train": {"steps": 7, "ema": {"enabled": False}}, "seed": 3}
    with pytest.raises(UserError, match=r"dotted\.key=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(UserError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_override_errors_reach_the_cli_with_status_2(write_config):
    result = validate(write_config(tiny_config()), "--set", "train.batch_size=zero")
    assert result.exit_code == 2 and "train.batch_size" in result.output


def test_debug_shows_the_traceback(write_config):
    config = tiny_config()
    config["model"]["name"] = "nope"
    result = CliRunner().invoke(cli, ["--debug", "validate", str(write_config(config))])
    assert result.exit_code == 2 and "Traceback" in result.output


# Hypothesis: random damage to a good config never produces a traceback.

SECTIONS = ["seed", "device", "data", "model", "loss", "sampler", "train", "output", "export", "plugins"]
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=12),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def damaged_configs(draw):
    config = tiny_config()
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(SECTIONS))
        if isinstance(config.get(section), dict) and draw(st.booleans()):
            keys = [*config[section], "name", "bogus", "steps", "resolution", "width"]
            config[section][draw(st.sampled_from(keys))] = draw(junk)
        else:
            config[section] = draw(junk)
    return config


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=damaged_configs())
def test_damaged_configs_exit_0_or_2_and_never_show_a_traceback(tmp_path, config):
    path = tmp_path / "damaged.yaml"
    path.write_text(yaml.safe_dump(config))
    result = validate(path)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert result.output.startswith(f"error: {path}"), result.output


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_arbitrary_text_as_a_config_is_a_clean_user_error(tmp_path, text):
    path = tmp_path / "text.yaml"
    path.write_text(text, encoding="utf-8")
    result = validate(path)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_validate_builds_the_components_and_checks_phase_names(write_config):
    config = tiny_config()
    config["train"]["optimizers"] = {"generatr": {"lr": 1e-3}}
    path = write_config(config)
    result = validate(path)
    assert result.exit_code == 2
    assert f"{path}: train.optimizers.generatr: loss 'gan-bce' has no phase 'generatr'" in result.output
    assert "did you mean 'generator'" in result.output


def test_errors_found_while_building_name_the_config_file(write_config, tmp_path):
    config = tiny_config(data={"name": "image-folder", "root": str(tmp_path / "none")})
    path = write_config(config)
    result = CliRunner().invoke(cli, ["run", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: data.root: no such folder")
    assert not (tmp_path / "run").exists()


def test_a_metric_listed_twice_is_refused(write_config):
    config = tiny_config()
    config["train"]["eval"] = {"metrics": [{"name": "mode-coverage"}, {"name": "mode-coverage", "threshold": 2}]}
    result = validate(write_config(config))
    assert result.exit_code == 2 and "train.eval.metrics[1].name: the metric 'mode-coverage' is listed twice" in result.output

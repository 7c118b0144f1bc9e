"""Settings typed once: the config dataclasses are what the CLI, the trainer and evaluation use."""

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from advmix.attacks import AdvMixConfig
from advmix.classifiers import make_classifier
from advmix.datasets import find_root, load
from advmix.settings import fixed_names, flat_name, from_flat, settings, spec_of
from cli.main import cli
from tests.conftest import FIXTURE_DATA
from training.config import TrainConfig
from training.methods import METHODS


def _option(command, dest):
    return next(p for p in cli.commands[command].params if p.name == dest)


@pytest.mark.parametrize("cls", [TrainConfig, AdvMixConfig])
def test_every_setting_is_an_option_of_train_with_its_default(cls):
    for f, _ in settings(cls):
        option = _option("train", flat_name(f))
        assert option.default == (None if f.default is dataclasses.MISSING else f.default)
        assert option.help == spec_of(f).help


def test_evaluate_builds_the_attack_from_the_same_settings():
    for f, _ in settings(AdvMixConfig):
        assert _option("evaluate", flat_name(f)).default == f.default


def test_method_and_projection_choices_come_from_their_tables():
    assert list(_option("train", "method").type.choices) == list(METHODS)
    assert list(_option("train", "projection").type.choices) == ["box", "ball", "z"]


def test_flat_names_round_trip_and_nested_settings_are_fixed_on_resume():
    cfg = from_flat(TrainConfig, {"store": "s", "generator": "g", "attack_steps": 2, "eps": 0.01})
    assert cfg.attack.steps == 2 and cfg.eps == 0.01 and cfg.train_on == "both+random"
    flat = cfg.to_dict(redact=False)
    assert flat["attack_steps"] == 2 and "attack" not in flat
    assert from_flat(TrainConfig, {k: v for k, v in flat.items() if k != "storage_options"}) == cfg
    assert {"attack_steps", "projection", "method", "seed"} <= set(fixed_names(TrainConfig))
    assert "epochs" not in fixed_names(TrainConfig)  # a run may be extended on resume
    with pytest.raises(TypeError, match="no setting epochz"):
        from_flat(TrainConfig, {"store": "s", "generator": "g", "epochz": 3})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": float("nan")}, "--lr must be a finite number"),
        ({"lr": 0.0}, "--lr must be > 0"),
        ({"method": "bogus"}, "--method must be one of"),
        ({"eps": 2.0}, "--eps must be <= 1"),
    ],
)
def test_a_config_built_in_code_checks_what_the_cli_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(store="s", generator="g", **kwargs)
    with pytest.raises(ValueError, match="--attack-steps must be >= 0"):
        AdvMixConfig(steps=-1)


def test_bad_values_are_usage_errors_naming_the_option(tmp_path):
    g = tmp_path / "G.pt"
    g.write_bytes(b"x")
    for flag, value in (("--lr", "0"), ("--ball-radius", "-1"), ("--projection", "cube")):
        result = CliRunner().invoke(cli, ["train", "--store", "s", "--generator", str(g),
                                          "--out", str(tmp_path / "o"), flag, value])  # fmt: skip
        assert result.exit_code == 2 and flag in result.output, (flag, result.output)


def test_the_classifier_applies_its_own_input_mode():
    torch.manual_seed(0)
    gray = make_classifier(10, width=4, grayscale=True).eval()
    rgb = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(gray(rgb), gray(rgb.amax(dim=1, keepdim=True)))
    assert make_classifier(10, width=4)(rgb).shape == (3, 10)


def test_the_suite_reads_the_committed_subset_not_a_system_package():
    assert find_root("cfmnist") == FIXTURE_DATA
    assert len(load("cfmnist:train")) == 2048 and len(load("cfmnist:random")) == 1024

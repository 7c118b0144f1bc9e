"""`advmix gan train`: a few steps of a tiny GAN resume bit-identically; CLI errors."""

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from advmix.checkpoints import load_generator
from advmix.discriminator import DiscriminatorConfig
from advmix.errors import AdvmixError
from advmix.stylegan import GeneratorConfig
from cli.main import cli
from gan.train import GANTrainConfig, GANTrainer, fine_tuning, mixing_grid, style_mixed_ws

SPEC = "cfmnist:train-random?limit=64"


def tiny_config(iterations: int) -> GANTrainConfig:
    return GANTrainConfig(
        dataset=SPEC,
        iterations=iterations,
        batch=4,
        r1_interval=2,
        ema_kimg=0.01,
        snapshot_every=2,
        sample_every=2,
        log_every=1,
        G=GeneratorConfig(z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=2),
        D=DiscriminatorConfig(channel_base=64, channel_max=8),
    )


def run(cfg: GANTrainConfig, run_dir, resume: bool = False) -> GANTrainer:
    trainer = GANTrainer(cfg, run_dir)
    if resume:
        trainer.load_checkpoint()
    trainer.load_data()
    trainer.train(progress=False)
    return trainer


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return run(tiny_config(4), tmp_path_factory.mktemp("straight"))


def test_resume_is_bit_identical(straight, tmp_path):
    run(tiny_config(2), tmp_path)
    resumed = run(tiny_config(4), tmp_path, resume=True)
    assert resumed.iteration == straight.iteration == 4
    for name in ("G", "D", "G_ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"
    assert straight.opt_D.state_dict()["state"][0]["exp_avg"].equal(
        resumed.opt_D.state_dict()["state"][0]["exp_avg"]
    )


def test_run_dir_outputs(straight):
    names = {p.name for p in straight.run_dir.iterdir()}
    assert {"checkpoint.pt", "generator.pt", "log.jsonl", "config.json"} <= names
    assert {"samples-000004.png", "mixing-000004.png", "network-snapshot-000002.pt"} <= names
    G = load_generator(straight.run_dir / "generator.pt")
    assert G.num_ws == 8
    for key, value in G.state_dict().items():
        assert torch.equal(value, straight.G_ema.state_dict()[key])
    log = [json.loads(line) for line in (straight.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4] and "r1" in log[0]


def test_mixing_grid_layout_and_style_mixing(straight):
    G = straight.G_ema
    grid = mixing_grid(G, k=3, rows=2, cols=3)
    assert grid.shape == (3 * 4, 3, 32, 32)
    assert torch.equal(grid[0], torch.ones_like(grid[0]))
    z, z2 = torch.randn(6, 8), torch.randn(6, 8)
    ws = style_mixed_ws(G, z, z2, prob=1.0)
    a, b = G.mapping(z), G.mapping(z2)
    for i in range(6):  # each sample: a prefix from z, the rest (non-empty) from z2
        from_a = [torch.equal(ws[i, j], a[i, j]) for j in range(8)]
        cut = from_a.index(False)
        assert cut >= 1 and all(from_a[:cut]) and torch.equal(ws[i, cut:], b[i, cut:])


def test_resume_with_other_architecture_is_refused(straight):
    cfg = tiny_config(6)
    cfg.G.channel_max = 16
    trainer = GANTrainer(cfg, straight.run_dir)
    with pytest.raises(AdvmixError, match="settings differ"):
        trainer.load_checkpoint()


def test_cli_train_and_usage_errors(tmp_path):
    runner = CliRunner()
    args = ["gan", "train", "--dataset", "cfmnist:train-random?limit=16", "--out",
            str(tmp_path / "r"), "--iterations", "1", "--batch", "4", "--channel-base", "32",
            "--channel-max", "4", "--d-channel-base", "32", "--d-channel-max", "4",
            "--z-dim", "4", "--w-dim", "4", "--no-progress", "--threads", "1"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["iterations"] == 1
    again = runner.invoke(cli, args)  # an existing run is not overwritten
    assert again.exit_code != 0 and "--resume" in str(again.exception)
    resumed = runner.invoke(cli, [*args[:7], "2", *args[8:], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    bad = runner.invoke(cli, [*args, "--resolution", "48"])
    assert bad.exit_code == 2 and "power of two" in bad.output


def test_fine_tuning_starts_from_the_given_generator(straight, tmp_path):
    start = straight.run_dir / "generator.pt"
    cfg = fine_tuning(replace(tiny_config(1), G=GeneratorConfig()), str(start))
    assert cfg.G == replace(load_generator(start).cfg, k=None) and cfg.init_fingerprint
    trainer = GANTrainer(cfg, tmp_path / "ft")
    for key, value in load_generator(start).state_dict().items():
        assert torch.equal(trainer.G.state_dict()[key], value)
        assert torch.equal(trainer.G_ema.state_dict()[key], value)
    trainer.load_data()
    trainer.train(progress=False)
    assert load_generator(tmp_path / "ft" / "generator.pt").cfg.z_dim == 8


def test_fine_tuning_refuses_other_weights_on_resume(straight, tmp_path):
    cfg = fine_tuning(tiny_config(1), str(straight.run_dir / "generator.pt"))
    other = run(tiny_config(1), tmp_path / "other")  # same architecture, other weights
    with pytest.raises(AdvmixError, match="not the generator this run started from"):
        GANTrainer(replace(cfg, init_from=str(other.run_dir / "generator.pt")), tmp_path / "x")


def test_cli_fine_tune_takes_the_architecture_from_the_file(straight, tmp_path):
    args = ["gan", "train", "--dataset", "cfmnist:train-random?limit=16", "--out",
            str(tmp_path / "r"), "--iterations", "1", "--batch", "4", "--d-channel-base", "32",
            "--d-channel-max", "4", "--no-progress", "--threads", "1",
            "--init-from", str(straight.run_dir / "generator.pt")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["G"]["z_dim"] == 8 and saved["init_fingerprint"]
    clash = CliRunner().invoke(cli, [*args[:5], str(tmp_path / "r2"), *args[6:], "--z-dim", "4"])
    assert clash.exit_code == 2 and "drop --z-dim" in clash.output

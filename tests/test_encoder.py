"""The amortised encoder: shapes, its mean-style start, checkpoint files and their failures,
training that learns, bit-identical resume, the real-image phase, the iterative kind and its
training from a direct encoder (tiny real networks)."""

import json

import pytest
import torch

from advmix.checkpoints import CheckpointError, generator_fingerprint, load_generator
from advmix.encoder import (
    Encoder,
    EncoderConfig,
    IterativeEncoder,
    build_encoder,
    encoder_fingerprint,
    load_encoder,
    perceptual_distance,
    save_encoder,
)
from advmix.errors import AdvmixError
from advmix.inversion import InversionConfig, invert, mean_style
from advmix.perceptual import load_features
from gan.encoder import EncoderTrainConfig, EncoderTrainer
from gan.train import style_mixed_ws
from tests.tiny_nets import tiny_features, tiny_generator

REAL = "cfmnist:train-random?limit=64"


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A tiny 32 px generator whose w_avg is its mean style (as a trained one tracks it), and
    a tiny feature network; their files too."""
    root = tmp_path_factory.mktemp("nets")
    g_path = tiny_generator(root / "G.pt")
    G = load_generator(g_path)
    G.mapping_net.w_avg.copy_(mean_style(G, 256, seed=0)[0])
    F = load_features(str(tiny_features(root / "F.pt")))
    return G, F, g_path


def train_config(**overrides) -> EncoderTrainConfig:
    settings = dict(batch=8, width=8, max_width=32, log_every=1, checkpoint_every=1000)
    return EncoderTrainConfig(**{**settings, **overrides})


def encoder_for(G, width: int = 8) -> Encoder:
    cfg = EncoderConfig(resolution=G.cfg.resolution, num_ws=G.num_ws, w_dim=G.w_dim, width=width)
    return Encoder(cfg, w_avg=G.w_avg)


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- the network ----------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [8, 32, 64])
def test_shapes_and_decoding(tmp_path, resolution):
    k = 2 if resolution == 8 else 4  # an 8 px generator has only 4 styles
    G = load_generator(tiny_generator(tmp_path / "G.pt", k=k, resolution=resolution))
    E = encoder_for(G)
    images = torch.rand(3, 3, resolution, resolution) * 2 - 1
    ws = E(images)
    assert ws.shape == (3, G.num_ws, G.w_dim)
    assert G.synthesis(ws).shape == images.shape
    with pytest.raises(ValueError, match="images must be"):
        E(torch.zeros(1, 3, resolution * 2, resolution * 2))


def test_untrained_encoder_predicts_the_mean_style():
    w_avg = torch.randn(16)
    E = Encoder(EncoderConfig(resolution=32, num_ws=8, w_dim=16), w_avg=w_avg)
    ws = E(torch.rand(4, 3, 32, 32) * 2 - 1)
    assert torch.allclose(ws, w_avg.expand(4, 8, 16), atol=1e-6)


def test_config_json_and_validation():
    cfg = EncoderConfig(resolution=64, num_ws=10, w_dim=32, width=16, max_width=64)
    assert EncoderConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert [cfg.channels(r) for r in cfg.trunk_resolutions] == [16, 32, 64, 64, 64]
    with pytest.raises(ValueError, match="unknown encoder config keys"):
        EncoderConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="lacks"):
        EncoderConfig.from_dict({"resolution": 32})
    with pytest.raises(ValueError, match="power of two"):
        EncoderConfig(resolution=48, num_ws=8, w_dim=8)


def test_perceptual_distance_is_zero_on_equal_features_and_per_image():
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    assert torch.equal(perceptual_distance(feats, feats), torch.zeros(2))
    other = [f.clone() for f in feats]
    other[0][1] += 1.0
    d = perceptual_distance(other, feats)
    assert d[0] == 0 and d[1] > 0


# -- files ----------------------------------------------------------------------------------------


def trained_looking(G) -> Encoder:
    """An encoder whose heads are not zero, so round trips are tested on real outputs."""
    torch.manual_seed(1)
    E = encoder_for(G)
    with torch.no_grad():
        for head in E.heads:
            head.weight.normal_(0, 0.1)
    return E.eval()


def test_save_load_round_trip(nets, tmp_path):
    G, _, _ = nets
    E = trained_looking(G)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    fp = save_encoder(E, tmp_path / "E.pt", generator_fingerprint="abc", extra={"steps": 3})
    loaded, info = load_encoder(tmp_path / "E.pt")
    assert fp == encoder_fingerprint(E) == encoder_fingerprint(loaded) == info["fingerprint"]
    assert info["generator_fingerprint"] == "abc" and info["extra"] == {"steps": 3}
    assert torch.equal(loaded(images), E(images))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def _corrupt(path):
    data = torch.load(path, weights_only=True)
    data["state_dict"]["heads.0.bias"] += 1.0  # the stored fingerprint no longer matches
    torch.save(data, path)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:300])


def _text(path):
    path.write_text("not a checkpoint\n")


def _version(path):
    torch.save({**torch.load(path, weights_only=True), "version": 99}, path)


def _config(path):
    torch.save({**torch.load(path, weights_only=True), "config": '{"resolution": 33}'}, path)


def _missing(path):
    path.unlink()


def _other_weights(path):
    data = torch.load(path, weights_only=True)
    cfg = json.loads(data["config"])
    torch.save({**data, "config": json.dumps({**cfg, "width": 16})}, path)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_corrupt, "fingerprint mismatch, the file is corrupt"),
        (_truncate, "not a readable encoder checkpoint"),
        (_text, "not a readable encoder checkpoint"),
        (_version, "version 99 is not supported"),
        (_config, "malformed encoder checkpoint"),
        (_other_weights, "weights do not match the stored config"),
        (_missing, "encoder checkpoint not found"),
    ],
)
def test_bad_files_are_refused_in_one_line(nets, tmp_path, spoil, message):
    path = tmp_path / "E.pt"
    save_encoder(trained_looking(nets[0]), path, generator_fingerprint="abc")
    spoil(path)
    with pytest.raises(CheckpointError) as err:
        load_encoder(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_a_generator_checkpoint_is_not_an_encoder(nets):
    _, _, g_path = nets
    with pytest.raises(CheckpointError) as err:
        load_encoder(g_path)
    assert str(err.value) == f"{g_path}: a generator checkpoint, not an advmix encoder checkpoint"


# -- training -------------------------------------------------------------------------------------


def latent_error(G, E, seed: int = 123) -> float:
    """Mean squared style error on a fixed batch of style-mixed samples."""
    gen = torch.Generator().manual_seed(seed)
    z, z2 = torch.randn(64, G.z_dim, generator=gen), torch.randn(64, G.z_dim, generator=gen)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ws = style_mixed_ws(G, z, z2, 0.9)
        return (E(G.synthesis(ws)) - ws).square().mean().item()


def test_training_beats_the_mean_style(nets, tmp_path):
    G, F, _ = nets
    cfg = train_config(steps=40, batch=16, lr=2e-3, pixel_weight=0.0, perceptual_weight=0.0)
    trainer = EncoderTrainer(cfg, G, F, tmp_path)
    before = latent_error(G, trainer.E)  # the untrained encoder predicts w_avg
    path = trainer.train(progress=False)
    after = latent_error(G, trainer.E)
    assert after < 0.9 * before, (before, after)
    E, info = load_encoder(path)
    assert info["generator_fingerprint"] == generator_fingerprint(G)
    assert info["extra"]["steps"] == 40 and info["extra"]["final_metrics"]["step"] == 40
    assert latent_error(G, E) == after


def run(cfg, nets, run_dir, resume=False) -> EncoderTrainer:
    G, F, _ = nets
    trainer = EncoderTrainer(cfg, G, F, run_dir)
    if resume:
        trainer.load_checkpoint()
    trainer.train(progress=False)
    return trainer


def test_resume_is_bit_identical(nets, tmp_path):
    cfg = lambda steps: train_config(steps=steps, truncation_psi=0.7)  # noqa: E731
    straight = run(cfg(6), nets, tmp_path / "straight")
    run(cfg(3), nets, tmp_path / "resumed")
    resumed = run(cfg(6), nets, tmp_path / "resumed", resume=True)
    assert resumed.step == straight.step == 6
    a, b = straight.E.state_dict(), resumed.E.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    opt_a, opt_b = straight.optimiser.state_dict(), resumed.optimiser.state_dict()
    assert torch.equal(opt_a["state"][0]["exp_avg_sq"], opt_b["state"][0]["exp_avg_sq"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "straight")) == strip(read_metrics(tmp_path / "resumed"))
    row = read_metrics(tmp_path / "straight")[-1]
    assert set(row) == {"step", "phase", "latent", "pixel", "perceptual", "mix", "loss",
                        "elapsed_s"}  # fmt: skip
    assert row["mix"] is None  # not a term of this run (mix_weight 0)


def test_resume_refuses_changed_settings(nets, tmp_path):
    run(train_config(steps=1), nets, tmp_path)
    G, F, _ = nets
    trainer = EncoderTrainer(train_config(steps=2, lr=0.01, seed=5), G, F, tmp_path)
    with pytest.raises(AdvmixError, match=r"cannot resume, settings differ.*\['lr', 'seed'\]"):
        trainer.load_checkpoint()
    (tmp_path / "other.pt").write_text("text")
    with pytest.raises(AdvmixError, match="not a readable encoder training checkpoint"):
        trainer.load_checkpoint(tmp_path / "other.pt")


def test_real_phase_fine_tunes_on_images(nets, tmp_path):
    cfg = train_config(steps=2, real_steps=3, real_data=REAL)
    trainer = run(cfg, nets, tmp_path)
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["phase"]) for r in rows] == [
        (1, "synthetic"), (2, "synthetic"), (3, "real"), (4, "real"), (5, "real"),
    ]  # fmt: skip
    assert all(r["latent"] is None and r["perceptual"] > 0 for r in rows[2:])
    _, info = load_encoder(tmp_path / "encoder.pt")
    assert info["extra"]["steps"] == 5 and info["extra"]["train_config"]["real_data"] == REAL
    assert trainer.real_images.shape == (64, 3, 32, 32)


def test_real_images_must_match_the_generator(tmp_path):
    G = load_generator(tiny_generator(tmp_path / "G.pt", resolution=64))
    F = load_features(str(tiny_features(tmp_path / "F.pt")))
    cfg = train_config(steps=0, real_steps=1, real_data=REAL)
    with pytest.raises(AdvmixError, match="images are 3x32x32, the generator makes 3x64x64"):
        EncoderTrainer(cfg, G, F, tmp_path / "run").train(progress=False)
    with pytest.raises(AdvmixError, match="needs --data"):
        train_config(real_steps=1)


def test_non_finite_loss_stops_training(tmp_path):
    G = load_generator(tiny_generator(tmp_path / "G.pt"))
    G.mapping_net.w_avg[0] = float("nan")  # the encoder adds its offsets to w_avg
    F = load_features(str(tiny_features(tmp_path / "F.pt")))
    with pytest.raises(AdvmixError, match=r"diverged at step 1 \(synthetic\): loss nan"):
        EncoderTrainer(train_config(steps=2), G, F, tmp_path / "run").train(progress=False)


def test_inversion_starts_from_the_prediction(nets):
    G, F, _ = nets
    E = trained_looking(G)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # invert optimises a leaf copy of the start
        start = E(images)
    result = invert(G, F, images, InversionConfig(steps=0, w_avg_samples=8, k=4), w_start=start)
    assert torch.equal(result.ws, start)


def test_the_cli_trains_resumes_and_writes_an_encoder_encoding_accepts(tmp_path, capsys):
    from cli.main import main

    G, F = tiny_generator(tmp_path / "G.pt"), tiny_features(tmp_path / "F.pt")
    args = ["encoder", "train", "--generator", str(G), "--features", str(F), "--out",
            str(tmp_path / "run"), "--batch", "4", "--width", "4", "--max-width", "8",
            "--no-progress", "--log-every", "1"]  # fmt: skip
    main([*args, "--steps", "2"])
    main([*args, "--steps", "3", "--data", "cfmnist:train-random?limit=16", "--real-steps", "1",
          "--resume"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 4 and summary["encoder"].endswith("encoder.pt")
    E, info = load_encoder(summary["encoder"])
    assert info["generator_fingerprint"] == generator_fingerprint(load_generator(G))
    with pytest.raises(SystemExit) as exc:  # a setting that must not change on resume
        main([*args, "--steps", "5", "--lr", "0.5", "--resume"])
    assert exc.value.code == 1 and "lr" in capsys.readouterr().err


# -- the iterative kind ---------------------------------------------------------------------------


def iterative_for(G, passes: int = 2, width: int = 8) -> IterativeEncoder:
    cfg = EncoderConfig(resolution=G.cfg.resolution, num_ws=G.num_ws, w_dim=G.w_dim, width=width,
                        kind="iterative", passes=passes)  # fmt: skip
    return build_encoder(cfg, w_avg=G.w_avg)


def test_an_untrained_refiner_keeps_the_base_prediction(nets):
    G, _, _ = nets
    E = iterative_for(G)
    with torch.no_grad():
        for head in E.base.heads:
            head.weight.normal_(0, 0.1)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with pytest.raises(RuntimeError, match="call attach"):
        E(images)
    E.attach(G)
    assert E(images).shape == (3, G.num_ws, G.w_dim)
    assert torch.allclose(E(images), E.base(images), atol=1e-6)
    with torch.no_grad():  # a refiner that predicts a residual moves it, once per pass
        E.refiner.heads[0].bias.fill_(0.5)
    moved = E(images, passes=3) - E.base(images)
    assert torch.allclose(moved[:, 0], torch.full_like(moved[:, 0], 1.5), atol=1e-5)
    assert torch.allclose(moved[:, 1:], torch.zeros_like(moved[:, 1:]), atol=1e-6)


def test_kind_and_passes_are_checked():
    base = dict(resolution=32, num_ws=8, w_dim=16)
    with pytest.raises(ValueError, match="encoder kind must be one of"):
        EncoderConfig(**base, kind="resnet")
    with pytest.raises(ValueError, match="the iterative kind takes 1..16 passes, got 0"):
        EncoderConfig(**base, kind="iterative")
    with pytest.raises(ValueError, match="the direct kind takes 0..0 passes, got 2"):
        EncoderConfig(**base, passes=2)
    assert "kind" not in EncoderConfig(**base).to_dict()  # direct files read as before


def test_iterative_files_record_kind_and_passes(nets, tmp_path):
    G, _, _ = nets
    E = iterative_for(G, passes=3)
    with torch.no_grad():
        E.refiner.heads[2].weight.normal_(0, 0.1)
    save_encoder(E, tmp_path / "E.pt", generator_fingerprint="abc")
    loaded, info = load_encoder(tmp_path / "E.pt")
    assert isinstance(loaded, IterativeEncoder) and loaded.cfg == E.cfg
    assert loaded.cfg.kind == "iterative" and loaded.cfg.passes == 3
    assert info["fingerprint"] == encoder_fingerprint(E)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.attach(G)(images), E.attach(G)(images))


def test_version_1_files_still_load(nets, tmp_path):
    path = tmp_path / "E.pt"
    fp = save_encoder(trained_looking(nets[0]), path, generator_fingerprint="abc")
    torch.save({**torch.load(path, weights_only=True), "version": 1}, path)
    loaded, info = load_encoder(path)
    assert isinstance(loaded, Encoder) and info["fingerprint"] == fp


def direct_encoder_file(nets, tmp_path) -> str:
    run(train_config(steps=3), nets, tmp_path / "direct")
    return str(tmp_path / "direct" / "encoder.pt")


def test_iterative_training_refines_a_frozen_direct_encoder(nets, tmp_path):
    G, F, _ = nets
    direct = direct_encoder_file(nets, tmp_path)
    cfg = train_config(steps=0, real_steps=25, real_data="cfmnist:train-random?limit=16",
                       batch=16, lr=3e-3, passes=2, init_from=direct, mix_weight=0.2)  # fmt: skip
    trainer = EncoderTrainer(cfg, G, F, tmp_path / "iterative")
    base_before = {k: v.clone() for k, v in trainer.E.base.state_dict().items()}
    trainer.load_real_data()
    images = (trainer.real_images.float() / 127.5 - 1.0)[:16]

    def pixel_error(E, passes):
        with torch.no_grad():
            return (
                (G.synthesis(E(images, passes=passes), noise_mode="const") - images).square().mean()
            )

    assert torch.allclose(pixel_error(trainer.E, 2), pixel_error(trainer.E, 0))  # starts as base
    trainer.train(progress=False)
    for key, value in trainer.E.base.state_dict().items():
        assert torch.equal(value, base_before[key]), f"the frozen base changed: {key}"
    assert pixel_error(trainer.E, 2) < pixel_error(trainer.E, 0)
    assert all(row["mix"] > 0 for row in read_metrics(tmp_path / "iterative"))
    E, _ = load_encoder(tmp_path / "iterative" / "encoder.pt")
    assert isinstance(E, IterativeEncoder) and E.cfg.passes == 2


def test_init_from_must_fit_the_run(nets, tmp_path):
    G, F, _ = nets
    direct = direct_encoder_file(nets, tmp_path)
    with pytest.raises(AdvmixError, match="architecture differs.*pass its --width"):
        EncoderTrainer(train_config(passes=2, init_from=direct, width=16), G, F, tmp_path / "a")
    other = load_generator(tiny_generator(tmp_path / "G2.pt", seed=1))
    with pytest.raises(AdvmixError, match="trained for another generator"):
        EncoderTrainer(train_config(passes=2, init_from=direct), other, F, tmp_path / "b")
    (tmp_path / "bad.pt").write_text("text")
    with pytest.raises(AdvmixError, match=r"^--init-from .*bad.pt: not a readable encoder"):
        EncoderTrainer(train_config(init_from=str(tmp_path / "bad.pt")), G, F, tmp_path / "c")


def test_a_direct_run_from_an_encoder_fine_tunes_all_of_it(nets, tmp_path):
    G, F, _ = nets
    direct = direct_encoder_file(nets, tmp_path)
    trainer = EncoderTrainer(train_config(steps=0, init_from=direct), G, F, tmp_path / "ft")
    source, _ = load_encoder(direct)
    assert encoder_fingerprint(trainer.E) == encoder_fingerprint(source)
    assert trainer.optimiser.param_groups[0]["params"] == list(trainer.E.parameters())


def test_the_cli_trains_an_iterative_encoder(tmp_path, capsys):
    from cli.main import main

    G, F = tiny_generator(tmp_path / "G.pt"), tiny_features(tmp_path / "F.pt")
    args = ["encoder", "train", "--generator", str(G), "--features", str(F), "--batch", "4",
            "--width", "4", "--max-width", "8", "--no-progress"]  # fmt: skip
    main([*args, "--out", str(tmp_path / "direct"), "--steps", "1"])
    direct = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoder"]
    main([*args, "--out", str(tmp_path / "it"), "--steps", "2", "--passes", "2",
          "--init-from", direct])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    E, _ = load_encoder(summary["encoder"])
    assert E.cfg.kind == "iterative" and E.cfg.passes == 2 and summary["step"] == 2
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "x"), "--passes", "17"])
    assert exc.value.code == 2


def test_the_encode_job_starts_from_an_iterative_encoders_passes(nets, tmp_path):
    """The Beam job's projector attaches its generator, so an iterative file works as
    ``--init encoder --encoder E.pt`` does for a direct one."""
    import numpy as np

    from pipeline.model_handler import Projector

    g_path = nets[2]
    G = load_generator(g_path)  # the file's generator, which the job loads
    F_path = tiny_features(tmp_path / "F.pt")
    E = iterative_for(G)
    with torch.no_grad():
        E.refiner.heads[1].bias.fill_(0.25)
    save_encoder(E, tmp_path / "E.pt", generator_fingerprint=generator_fingerprint(G))
    cfg = InversionConfig(steps=0, w_avg_samples=8, k=4, init="encoder")
    projector = Projector(str(g_path), str(F_path), cfg, "cpu", encoder_url=str(tmp_path / "E.pt"))
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    out = projector.project(images, seeds=[0, 1])
    with torch.no_grad():
        expected = E.attach(G)(torch.from_numpy(images).float() / 127.5 - 1)
    assert np.allclose(out["w"], expected.numpy(), atol=1e-5)

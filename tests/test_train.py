"""advmix train / evaluate as a user runs them: SIGKILL + resume is bit-identical, DDP with
2 processes, generator refusal, config files, CLI errors, evaluation tables."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_nets import tiny_generator
from train_helpers import write_store

from advmix.checkpoints import generator_fingerprint, load_generator

# 96 samples in shards of 16, batches of 16: 6 steps an epoch.
TRAIN = [
    "--method", "advmix", "--batch-size", "16", "--width", "8", "--attack-steps", "2",
    "--buffer-size", "40", "--threads", "1", "--no-progress", "--checkpoint-every", "1",
    "--log-every", "1",
]  # fmt: skip


def advmix(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True,
        timeout=300, env=env, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    G_path = tiny_generator(root / "G.pt", k=4)
    other = tiny_generator(root / "G-other.pt", k=4, seed=1)
    G = load_generator(G_path)
    store = write_store(
        str(root / "store.zarr"), num_samples=96, shard_size=16, k=4,
        fingerprint=generator_fingerprint(G), generator=G, image_source="cfmnist:train?limit=96",
    )  # fmt: skip
    return {"root": root, "G": str(G_path), "other": str(other), "store": store}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def straight(nets):
    out = nets["root"] / "straight"
    result = advmix(
        "train", "--store", nets["store"], "--generator", nets["G"], "--epochs", "2",
        "--workers", "2", "--out", str(out), *TRAIN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_sigkill_mid_epoch_then_resume_is_bit_identical(nets, straight, tmp_path):
    out = tmp_path / "killed"
    args = [
        "train", "--store", nets["store"], "--generator", nets["G"], "--epochs", "2",
        "--workers", "2", "--out", str(out), *TRAIN,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        # kill during epoch 1 (steps 7..12), after a mid-epoch checkpoint
        while time.monotonic() < deadline:
            if metrics.exists() and sum(
                json.loads(line).get("step", 0) >= 8 for line in metrics.read_text().splitlines()
            ):
                break
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "classifier.pt").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not ckpt["epoch_done"] and 0 < ckpt["stream"][0]["samples_consumed"] < 96

    result = advmix(*args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed at step" in result.stderr
    a, b = weights(straight / "classifier.pt"), weights(out / "classifier.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after SIGKILL + resume"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["event"] == "train"]  # fmt: skip
    assert steps == list(range(1, 13))  # no step logged twice


def test_run_outputs(nets, straight):
    names = {p.name for p in straight.iterdir()}
    assert {"checkpoint.pt", "classifier.pt", "metrics.jsonl", "run.json"} <= names
    assert {"grid-epoch0000.png", "grid-epoch0001.png", "tensorboard"} <= names
    record = json.loads((straight / "run.json").read_text())
    G = load_generator(nets["G"])
    assert record["generator"]["fingerprint"] == generator_fingerprint(G)
    assert len(record["store"]["fingerprint"]) == 64 and record["config"]["method"] == "advmix"
    assert record["versions"]["torch"] and "git_sha" in record
    ckpt = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch_done"] and ckpt["epoch"] == 1 and ckpt["step"] == 12
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["event"] == "epoch"] == [0, 1]
    assert all("fooled" in r for r in lines if r["event"] == "train")


def test_cosine_schedule_decays_to_zero_and_resumes_on_the_same_curve(nets, straight, tmp_path):
    """--lr-schedule cosine: each step's rate is logged, falls from --lr toward 0 by the end of
    --epochs, and a run stopped mid-epoch then resumed takes the same rates and ends with the
    same weights as one that ran through; it is the default, and constant keeps --lr."""
    args = ["train", "--store", nets["store"], "--generator", nets["G"], "--epochs", "2",
            "--workers", "2", *TRAIN, "--lr-schedule", "cosine"]  # fmt: skip
    through, stopped = tmp_path / "through", tmp_path / "stopped"
    assert advmix(*args, "--out", str(through)).returncode == 0
    assert advmix(*args, "--out", str(stopped), "--max-steps", "7").returncode == 0
    result = advmix(*args, "--out", str(stopped), "--resume")
    assert result.returncode == 0, result.stderr

    def rates(run) -> list[float]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r["lr"] for r in map(json.loads, lines) if r["event"] == "train"]

    lr = rates(through)
    assert len(lr) == 12 and lr[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lr, lr[1:], strict=False)) and lr[-1] < 0.02 * lr[0]
    assert rates(stopped) == lr
    a, b = weights(through / "classifier.pt"), weights(stopped / "classifier.pt")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert rates(straight) == lr
    constant = tmp_path / "constant"
    assert advmix(*args, "--out", str(constant), "--lr-schedule", "constant").returncode == 0
    assert rates(constant) == [pytest.approx(1e-3)] * 12


def test_scores_while_training_are_logged_and_leave_the_weights_alone(nets, straight, tmp_path):
    out = tmp_path / "scored"
    specs = ["cfmnist:random?limit=64", "cfmnist:swapped?sigma=0.02&limit=32"]
    result = advmix(
        "train", "--store", nets["store"], "--generator", nets["G"], "--epochs", "2",
        "--workers", "2", "--out", str(out), *TRAIN, "--eval-every", "4",
        *[arg for spec in specs for arg in ("--eval-data", spec)],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    a, b = weights(straight / "classifier.pt"), weights(out / "classifier.pt")
    assert all(torch.equal(a[name], b[name]) for name in a)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scores = [r for r in records if r["event"] == "eval"]
    # every 4 steps, and at each epoch's end (6 steps an epoch) unless just scored
    assert [r["step"] for r in scores] == [4, 6, 8, 12]
    seconds = [r["train_s"] for r in scores]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert all(set(r["accuracy"]) == set(specs) for r in scores)
    assert all(0 <= acc <= 1 for r in scores for acc in r["accuracy"].values())
    epochs = [r for r in records if r["event"] == "epoch"]
    assert epochs[-1]["train_s"] == scores[-1]["train_s"]


def test_ddp_two_processes_cover_the_store(nets, tmp_path):
    # 97 samples: ranks get 48 and 49 (3 and 4 batches of 16), so DDP runs under join()
    G = load_generator(nets["G"])
    store = write_store(
        str(tmp_path / "s97.zarr"), num_samples=97, shard_size=16, k=4,
        fingerprint=generator_fingerprint(G), generator=G,
    )  # fmt: skip
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "cli", "train", "--store", store, "--generator",
        nets["G"], "--epochs", "1", "--out", str(out), *TRAIN,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-2000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    states = ckpt["stream"]
    assert [s["rank"] for s in states] == [0, 1] and [s["world_size"] for s in states] == [2, 2]
    assert sorted(s["samples_consumed"] for s in states) == [48, 49]
    assert ckpt["rank_steps"] == [3, 4]
    assert (out / "classifier.pt").exists()


def test_store_from_another_generator_is_refused(nets, tmp_path):
    result = advmix(
        "train", "--store", nets["store"], "--generator", nets["other"], "--out",
        str(tmp_path / "x"), "--epochs", "1",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:") and "generator mismatch" in result.stderr
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "pgd"], "'pgd' is not one of"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "-3"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--eps", "9/x"], "not a number or a fraction"),
        (["--eps", "2"], "must be in [0, 1]"),
        (["--restarts", "zero"], "--restarts"),
        (["--projection", "sphere"], "--projection"),
        (["--device", "tpu"], "--device"),
        (["--storage-option", "novalue"], "KEY=VALUE"),
        (["--eval-data", "cfmnist:sideways"], "--eval-data"),
        (["--eval-every", "0"], "--eval-every"),
        (["--mix-images", "sharp"], "--mix-images"),
        (["--method", "randmix", "--train-on", "both+random"], "has none"),
    ],
)
def test_bad_cli_values_exit_2_with_one_line(nets, tmp_path, extra, message):
    from click.testing import CliRunner

    from cli.main import cli

    args = ["train", "--store", nets["store"], "--generator", nets["G"], "--out",
            str(tmp_path / "x"), *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "x").exists()


def test_bad_cli_value_as_a_process_exits_2_without_traceback(nets, tmp_path):
    result = advmix(
        "train", "--store", nets["store"], "--generator", nets["G"], "--out",
        str(tmp_path / "x"), "--attack-steps", "-1",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--attack-steps" in errors[0]


def test_config_file_sets_defaults_and_flags_override(nets, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from training import train as train_module

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(cfg, run_dir, device="cpu"):
        seen["cfg"] = cfg
        raise Stop

    config = tmp_path / "run.toml"
    config.write_text('method = "randmix"\nepochs = 7\nbatch-size = 8\nlr = 0.01\n')
    original = train_module.Trainer
    train_module.Trainer = fake_trainer
    try:
        result = CliRunner().invoke(
            cli, ["train", "--config", str(config), "--store", nets["store"], "--generator",
                  nets["G"], "--out", str(tmp_path / "o"), "--epochs", "3"],
        )  # fmt: skip
    finally:
        train_module.Trainer = original
    assert isinstance(result.exception, Stop), result.output
    cfg = seen["cfg"]
    assert (cfg.method, cfg.epochs, cfg.batch_size, cfg.lr) == ("randmix", 3, 8, 0.01)
    assert cfg.train_on == "both"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochz": 3}))
    result = advmix("train", "--config", str(bad), "--store", nets["store"], "--generator",
                    nets["G"], "--out", str(tmp_path / "o"))  # fmt: skip
    assert result.returncode == 2 and "unknown option 'epochz'" in result.stderr


def test_evaluate_table_and_json(nets, straight, tmp_path):
    out = tmp_path / "eval.json"
    result = advmix(
        "evaluate", "--checkpoint", str(straight / "checkpoint.pt"),
        "--data", "cfmnist:iid?limit=64", "--data", "cfmnist:random?limit=64",
        "--store", nets["store"], "--attack", "advmix", "--generator", nets["G"],
        "--attack-steps", "1", "--limit", "24", "--json-out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cfmnist:random?limit=64" in result.stdout and "robust" in result.stdout
    rows = json.loads(out.read_text())["results"]
    assert [r["n"] for r in rows] == [64, 64, 24]
    store_row = rows[2]
    assert store_row["budget"]["steps"] == 1 and 0 <= store_row["robust_accuracy"] <= 1
    assert store_row["worst_case_accuracy"] <= min(
        store_row["accuracy"], store_row["robust_accuracy"]
    )
    # the classifier file gives the same numbers as the checkpoint
    again = advmix("evaluate", "--checkpoint", str(straight / "classifier.pt"),
                   "--data", "cfmnist:iid?limit=64")  # fmt: skip
    assert again.returncode == 0 and again.stdout.splitlines()[2] == result.stdout.splitlines()[2]
    missing = advmix("evaluate", "--checkpoint", str(straight / "classifier.pt"), "--attack",
                     "advmix", "--data", "cfmnist:iid?limit=8")  # fmt: skip
    assert missing.returncode == 2 and "needs latents" in missing.stderr


@pytest.mark.parametrize("method", ["nominal", "at", "randmix", "mixup"])
def test_every_method_trains(nets, tmp_path, method):
    from training.config import TrainConfig
    from training.train import Trainer

    cfg = TrainConfig(
        store=nets["store"], generator=nets["G"], method=method, epochs=1, batch_size=16,
        width=4, pgd_steps=2, buffer_size=16, max_steps=2, grayscale=method == "nominal",
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / method)
    trainer.train()
    assert trainer.step == 2
    assert (tmp_path / method / "classifier.pt").exists()
    if method == "nominal":
        assert trainer.model.cfg.input_mode == "gray-max"


@pytest.mark.parametrize("train_on, blocks", [("both", 2), ("both+random", 3), ("mixes+random", 2)])
def test_advmix_trains_on_what_train_on_names(nets, train_on, blocks):
    """+random adds each example's random start (a RandMix sample) as one more block."""
    from advmix.attacks import AdvMixConfig
    from advmix.checkpoints import load_generator
    from advmix.classifiers import SmallCNN
    from advmix.projections import fit_style_set
    from training.config import TrainConfig
    from training.methods import METHODS, MethodContext

    G = load_generator(nets["G"])
    k = G.cfg.k
    cfg = TrainConfig(store=nets["store"], generator=nets["G"], method="advmix",
                      train_on=train_on, attack=AdvMixConfig(steps=1, style_samples=100))  # fmt: skip
    ctx = MethodContext(SmallCNN(num_classes=10, width=4), G, k,
                        fit_style_set(G, k, cfg.attack), cfg)  # fmt: skip
    w = G.mapping(torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(0)))
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    batch = METHODS["advmix"](ctx, x, w, y, torch.Generator().manual_seed(1))
    assert len(batch.inputs) == blocks * 6 and torch.equal(batch.targets, y.repeat(blocks))
    if train_on.startswith("both"):
        assert torch.equal(batch.inputs[:6], x)
    if train_on.endswith("+random"):
        from advmix.attacks import randmix

        starts, _ = randmix(G, w, k, torch.Generator().manual_seed(1))
        torch.testing.assert_close(batch.inputs[-6:], starts, atol=1e-5, rtol=0)


def test_grayscale_is_a_flag_that_trains_the_oracle(nets, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from training.evaluate import load_model

    args = ["train", "--store", nets["store"], "--generator", nets["G"], "--method", "nominal",
            "--grayscale", "--epochs", "1", "--max-steps", "1", "--width", "4", "--no-progress",
            "--out", str(tmp_path / "oracle")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    model, _ = load_model(tmp_path / "oracle" / "classifier.pt")
    assert model.cfg.input_mode == "gray-max"


def test_run_record_says_when_the_code_differs_from_its_commit(tmp_path):
    import subprocess

    from training.runfiles import git_sha

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)  # fmt: skip

    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "code.py")
    git("commit", "-qm", "code")
    sha = git_sha(tmp_path)
    assert sha and len(sha) == 40
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_sha(tmp_path) == sha + "+modified"
    assert git_sha(tmp_path.parent / "no-such-folder") is None


def test_the_classifier_scores_and_gradients_do_not_depend_on_its_cpu_memory_layout():
    """On the CPU SmallCNN runs channels-last for speed; its logits and the input gradients
    AdvMix ascends must be those of the same layers on NCHW tensors (to float rounding)."""
    from advmix.classifiers import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, width=8).train()
    x = torch.rand(16, 3, 32, 32, requires_grad=True)
    reference_x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    model.cpu_channels_last = False
    reference = model(reference_x)
    logits.square().sum().backward()
    reference.square().sum().backward()
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.allclose(x.grad, reference_x.grad, atol=1e-5)


def test_evaluation_folds_batchnorm_without_changing_the_trained_model():
    """Evaluation folds each BatchNorm into its convolution: the same predictions as the model
    in eval mode, while the model being trained keeps its layers and its training mode."""
    from advmix.classifiers import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, width=8).train()
    for _ in range(3):  # running statistics away from their initial 0 / 1
        model(torch.rand(32, 3, 32, 32))
    x = torch.rand(64, 3, 32, 32)
    fused = model.for_inference()
    with torch.no_grad():
        expected = model.eval()(x)
        got = fused(x)
    model.train()
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert model.training and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 4

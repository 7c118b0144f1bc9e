"""The Colored Fashion-MNIST study: encode once per colour bias, train every method, evaluate.

One latent store per sigma (the strength of the spurious colour correlation) is encoded with
the Beam job and reused by every method and seed, which is the point of the two-stage design.
Each step is skipped when its output already exists, so an interrupted study continues where it
stopped; the seconds every step took are kept in ``timings.json`` so the total compute of a study
run in several sittings is still known. ``make demo`` runs a small study (``DEMO``); ``make
reproduce`` the full one (``FULL`` on a GPU, the CPU-sized ``CPU`` otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from advmix import shipped
from cli.main import main as advmix_cli
from studies.pool import RunPool

SPLITS = ("iid", "random", "swapped")


@dataclass(frozen=True)
class Arm:
    """One arm of the study: a label and the ``advmix train`` options that make it."""

    name: str  # label in tables
    flags: tuple[str, ...]  # advmix train options


ARMS = {
    "nominal": Arm("nominal", ("--method", "nominal")),
    "at-4": Arm("AT 4/255", ("--method", "at", "--eps", "4/255")),
    "at-8": Arm("AT 8/255", ("--method", "at", "--eps", "8/255")),
    "mixup": Arm("mixup", ("--method", "mixup")),
    "randmix": Arm("RandMix", ("--method", "randmix")),
    "advmix": Arm("AdvMix", ("--method", "advmix")),
    "oracle": Arm("oracle (colour-blind)", ("--method", "nominal", "--grayscale")),
    # RandMix trained for as long as AdvMix took (more epochs): studies.scaling sets the epochs.
    "randmix-long": Arm("RandMix, AdvMix's seconds", ("--method", "randmix")),
}


@dataclass
class StudyConfig:
    sigmas: tuple[float, ...] = (0.05,)
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ("nominal", "randmix", "advmix")
    train_images: int = 1024
    encode_steps: int = 40
    encode_batch: int = 64
    epochs: int = 10
    batch_size: int = 64
    attack_steps: int = 5
    test_limit: int | None = None  # test images per split (None: all 10k)
    generator: str = str(shipped.GENERATOR)
    encoder: str | None = None  # Algorithm 1 starts from this encoder's prediction (else the mean)
    device: str = "cpu"  # where the encode job and training run
    extra_train_flags: tuple[str, ...] = field(default_factory=tuple)
    extra_encode_flags: tuple[str, ...] = field(default_factory=tuple)  # pipeline.encode options
    # Also train RandMix until it has spent each seed's AdvMix seconds (randmix-long).
    equal_compute: bool = False


# The demo starts Algorithm 1 from the shipped encoder's prediction: 10 steps from there give
# better latents than 40 from the mean at a quarter of the cost, and from that start steps
# without the mixing loss gain as much PSNR at under half the cost (docs/encoding.md), so
# only the last 3 have it. Three seeds and RandMix at AdvMix's seconds: one seed swings by
# several points with the CPU.
DEMO = StudyConfig(encode_steps=10, encoder=str(shipped.ENCODER), seeds=(0, 1, 2),
                   equal_compute=True, extra_encode_flags=("--mix-steps", "3"))  # fmt: skip
FULL = StudyConfig(
    sigmas=(0.02, 0.05, 0.1),
    seeds=(0, 1, 2),
    methods=("nominal", "at-4", "at-8", "mixup", "randmix", "advmix", "oracle"),
    train_images=4096,
    encode_steps=100,
    epochs=15,
    equal_compute=True,
)
# Every method, sigma and seed of FULL at the demo's size and encoding, which two CPU cores
# finish in about 1.2 hours with --workers 2.
CPU = dataclasses.replace(FULL, train_images=1024, epochs=10, encode_steps=DEMO.encode_steps,
                          encoder=DEMO.encoder, extra_encode_flags=DEMO.extra_encode_flags)  # fmt: skip
PRESETS = {"full": FULL, "cpu": CPU}


def encode_start(cfg: StudyConfig) -> str:
    """Where the study's encodes start Algorithm 1, in words for its pages."""
    start = "the shipped encoder's prediction" if cfg.encoder else "the mean style"
    flags = cfg.extra_encode_flags
    if "--mix-steps" in flags:  # Algorithm 1's mixing loss on the last steps only
        start += f", the mixing loss on the last {flags[flags.index('--mix-steps') + 1]}"
    return start


def say(message: str) -> None:
    print(f"[study] {message}", flush=True)


def encode(cfg: StudyConfig, sigma: float, store: Path) -> Path:
    """The store of ``cfg.train_images`` images at ``sigma`` (reused when it exists)."""
    from pipeline.encode import configure_logging
    from pipeline.encode import run as encode_job

    if (store / "manifest.json").exists():
        say(f"reusing the store {store}")
        return store
    spec = f"cfmnist:train?sigma={sigma:g}&limit={cfg.train_images}"
    start = "an encoder's prediction" if cfg.encoder else "the mean style"
    say(f"encoding {spec} with {cfg.encode_steps} steps from {start} into {store} (Beam, "
        "FnApiRunner)")  # fmt: skip
    started = time.perf_counter()
    configure_logging()
    init = ["--init", "encoder", "--encoder", cfg.encoder] if cfg.encoder else []
    counts = encode_job(
        ["--input", spec, "--output", str(store), "--generator", cfg.generator,
         "--steps", str(cfg.encode_steps), "--batch-size", str(cfg.encode_batch),
         "--shard-size", str(4 * cfg.encode_batch), "--device", cfg.device, "--overwrite", *init,
         *cfg.extra_encode_flags]
    )  # fmt: skip
    say(f"encoded {counts['encoded']} images in {time.perf_counter() - started:.0f}s, "
        f"mean PSNR {counts['mean_rec_psnr']} dB")  # fmt: skip
    return store


def train(cfg: StudyConfig, method: str, store: Path, seed: int, run_dir: Path,
          at_least_s: float | None = None) -> Path:  # fmt: skip
    """Train one arm (reusing a finished run). ``at_least_s``: then extend the run with more
    epochs (``--resume``) until it has spent that many seconds in training steps: an epoch's
    seconds drift with the machine's load, so a predicted epoch count can fall short."""
    model = run_dir / "classifier.pt"
    if model.exists():
        say(f"reusing {model}")
    else:
        say(f"training {ARMS[method].name} (seed {seed}) -> {run_dir}")
        train_command(cfg, method, store, seed, run_dir, cfg.epochs)
    if at_least_s is not None:
        extend_to_seconds(run_dir, at_least_s,
                          lambda epochs: train_command(cfg, method, store, seed, run_dir, epochs))  # fmt: skip
    return model


def extend_to_seconds(run_dir: Path, at_least_s: float, train_to: Callable[[int], None]) -> None:
    """Resume a finished run with more epochs (``train_to(epochs)`` resumes its checkpoint)
    until it has spent ``at_least_s`` seconds in training steps; its classifier and evaluation
    are deleted first, as they belong to fewer epochs."""
    epochs = run_epochs(run_dir)
    while (spent := train_seconds(run_dir)) < at_least_s:
        epochs += max(1, math.ceil((at_least_s - spent) / (spent / epochs)))
        say(f"{run_dir.name}: {spent:.0f}s of {at_least_s:.0f}s, extending to {epochs} epochs")
        (run_dir / "classifier.pt").unlink()
        (run_dir / "eval.json").unlink(missing_ok=True)
        train_to(epochs)


def train_command(cfg: StudyConfig, method: str, store: Path, seed: int, run_dir: Path,
                  epochs: int) -> None:  # fmt: skip
    resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
    advmix_cli(
        ["train", "--store", str(store), "--generator", cfg.generator,
         *ARMS[method].flags, "--epochs", str(epochs), "--batch-size", str(cfg.batch_size),
         "--attack-steps", str(cfg.attack_steps), "--seed", str(seed), "--out", str(run_dir),
         "--device", cfg.device, *cfg.extra_train_flags, *resume]
    )  # fmt: skip


def run_epochs(run_dir: Path) -> int:
    """The epochs a finished run has trained, resumed sittings included: its last epoch record
    (``run.json`` keeps the first sitting's setting; a resume writes ``run-resume-*.json``)."""
    return metric_records(run_dir, "epoch")[-1]["epoch"] + 1


def evaluate(cfg: StudyConfig, model: Path, sigma: float, out_json: Path) -> dict[str, float]:
    if not out_json.exists():
        limit = f"&limit={cfg.test_limit}" if cfg.test_limit else ""
        specs = [
            f"cfmnist:iid?sigma={sigma:g}{limit}",
            f"cfmnist:random?{limit[1:]}" if limit else "cfmnist:random",
            f"cfmnist:swapped?sigma={sigma:g}{limit}",
        ]
        flags = [arg for spec in specs for arg in ("--data", spec)]
        advmix_cli(["evaluate", "--checkpoint", str(model), *flags, "--json-out", str(out_json)])
    return accuracies(out_json)


def metric_records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def train_seconds(run_dir: Path) -> float:
    """Seconds the run spent in training steps (its last epoch record; resumes included)."""
    return float(metric_records(run_dir, "epoch")[-1]["train_s"])


def equal_compute_epochs(advmix_run: Path, randmix_run: Path, randmix_epochs: int) -> int:
    """The fewest epochs of RandMix that take at least as long as the AdvMix run did: epochs are
    whole, and the comparison must not short-change RandMix."""
    per_epoch = train_seconds(randmix_run) / randmix_epochs
    return max(randmix_epochs + 1, math.ceil(train_seconds(advmix_run) / per_epoch))


def accuracies(eval_json: Path) -> dict[str, float]:
    """{split: accuracy} of an evaluation the study wrote."""
    rows = json.loads(eval_json.read_text())["results"]
    return {split: row["accuracy"] for split, row in zip(SPLITS, rows, strict=True)}


# A colour-blind SmallCNN trained on all 60k grey training images (docs/model-card-generator.md):
# a ceiling the study's own oracle, trained on the study's few images and epochs, cannot reach.
REFERENCE = shipped.GRAY_CLASSIFIER


def reference_accuracy(out: Path, split: str = "random", sigma: float = 0.02) -> float:
    path = out / f"reference-{split}.json"
    spec = f"cfmnist:{split}" if split == "random" else f"cfmnist:{split}?sigma={sigma:g}"
    if not path.exists():
        advmix_cli(["evaluate", "--checkpoint", str(REFERENCE), "--data", spec,
                    "--json-out", str(path)])  # fmt: skip
    return json.loads(path.read_text())["results"][0]["accuracy"]


class Timings:
    """Seconds per study step, kept in ``timings.json`` across interrupted sittings."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def record(self, step: str, seconds: float) -> None:
        self.seconds[step] = round(self.seconds.get(step, 0.0) + seconds, 1)
        self.path.write_text(json.dumps(self.seconds, indent=2) + "\n")

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def run_study(cfg: StudyConfig, out: Path, workers: int = 1) -> list[dict]:
    """Encode one store per sigma, then train and evaluate every arm and seed on it; one row per
    run. ``workers``: training runs at once, each in its own process (``studies.pool``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study-config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    timings = Timings(out / "timings.json")
    stores = {}
    for sigma in cfg.sigmas:  # every store first: they are the reusable product of stage 1
        started = time.perf_counter()
        stores[sigma] = encode(cfg, sigma, out / "stores" / f"sigma-{sigma:g}")
        timings.record(f"encode sigma-{sigma:g}", time.perf_counter() - started)
    results = []
    with RunPool(workers, timings) as pool:
        for sigma in cfg.sigmas:
            results += every_arm(pool, study_run, dataclasses.replace(cfg, sigmas=(sigma,)),
                                 stores[sigma], out / "runs" / f"sigma-{sigma:g}",
                                 cfg.equal_compute)  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def every_arm(pool, job, cfg: StudyConfig, store: Path, runs: Path,
              equal_compute: bool) -> list[dict]:  # fmt: skip
    """Every method and seed of ``cfg`` trained on one store by ``job`` (``study_run``'s
    arguments, run in ``pool``), then, with ``equal_compute``, RandMix until it has spent each
    seed's AdvMix seconds: started as soon as that seed's AdvMix and RandMix runs have finished.
    Rows in plan order: methods by seeds, then the long RandMix runs."""
    plan = [(method, seed) for method in cfg.methods for seed in cfg.seeds]
    # The slowest arm first, so that parallel workers do not end with it running alone.
    for method, seed in sorted(plan, key=lambda run: run[0] != "advmix"):
        pool.submit((method, seed), job, cfg, method, store, seed, runs)
    waiting = set(cfg.seeds) if equal_compute else set()
    rows = {}
    while (done := pool.next_done()) is not None:
        rows[done[0]] = done[1]
        for seed in sorted(s for s in waiting if {("advmix", s), ("randmix", s)} <= rows.keys()):
            waiting.discard(seed)
            advmix, randmix = runs / f"advmix-seed{seed}", runs / f"randmix-seed{seed}"
            long_cfg = dataclasses.replace(
                cfg, epochs=equal_compute_epochs(advmix, randmix, cfg.epochs)
            )
            pool.submit(("randmix-long", seed), job, long_cfg, "randmix-long", store, seed, runs,
                        train_seconds(advmix))  # fmt: skip
    longs = [("randmix-long", seed) for seed in cfg.seeds if equal_compute]
    return [rows[run] for run in (*plan, *longs)]


def study_run(cfg: StudyConfig, method: str, store: Path, seed: int, runs: Path,
              at_least_s: float | None = None) -> tuple[dict, float, str]:  # fmt: skip
    """Train and evaluate one arm and seed at ``cfg``'s one sigma: a results row with its epochs
    and training seconds, the seconds taken and the step they are recorded under."""
    sigma = cfg.sigmas[0]
    run_dir = runs / f"{method}-seed{seed}"
    started = time.perf_counter()
    model = train(cfg, method, store, seed, run_dir, at_least_s)
    accuracy = evaluate(cfg, model, sigma, run_dir / "eval.json")
    seconds = time.perf_counter() - started
    say(f"{ARMS[method].name:>22} sigma {sigma:g} seed {seed}: "
        + ", ".join(f"{s} {accuracy[s]:.3f}" for s in SPLITS) + f" ({seconds:.0f}s)")  # fmt: skip
    row = {"sigma": sigma, "method": method, "seed": seed, "epochs": run_epochs(run_dir),
           "train_s": round(train_seconds(run_dir), 3), **accuracy}  # fmt: skip
    return row, seconds, f"{method} sigma-{sigma:g} seed-{seed}"

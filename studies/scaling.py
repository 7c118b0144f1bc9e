"""The data-scaling study: does AdvMix's lead grow, hold or vanish with more training images?

At the study's strongest colour correlation, one latent store per size (nested: the first N
training images) is encoded once, and nominal, RandMix, AdvMix and the colour-blind oracle are
trained on each, three seeds. Training settings scale with the data: fewer epochs on larger
stores (``ScalingConfig.sizes``), so the number of steps grows more slowly than the data. Every
run scores a fixed subset of the ``random`` and ``swapped`` test splits every ``eval_every``
steps (``advmix train --eval-data``), logged against its training seconds: the accuracy-vs-
compute curves come from those logs. At the sizes in ``equal_compute``, RandMix is trained once
more, until it has spent at least the seconds AdvMix took there (``randmix-long``: the
epochs the RandMix run's pace predicts, extended with ``--resume`` while it falls short).

Every step is skipped when its output exists (stores, classifiers, evaluations), so the study
continues where it stopped; ``timings.json`` keeps the seconds of every step.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from advmix import shipped
from cli.main import main as advmix_cli
from studies.pool import RunPool
from studies.study import (
    ARMS,
    StudyConfig,
    Timings,
    accuracies,
    encode,
    evaluate,
    every_arm,
    metric_records,
    run_epochs,
    say,
    train,
    train_seconds,
)

# What every run of the scaling study shares (store sizes and epochs come from ScalingConfig).
BASE = StudyConfig(
    seeds=(0, 1, 2),
    methods=("nominal", "randmix", "advmix", "oracle"),
    encode_steps=10,  # from the shipped encoder's prediction (docs/encoding.md)
    encoder=str(shipped.ENCODER),
)


@dataclass(frozen=True)
class ScalingConfig:
    base: StudyConfig = field(default_factory=lambda: BASE)
    sigma: float = 0.02  # the strongest correlation of the colour study
    sizes: tuple[tuple[int, int], ...] = ((1024, 10), (4096, 4), (16384, 4))  # (images, epochs)
    equal_compute: tuple[int, ...] = (16384,)  # sizes where RandMix also gets AdvMix's seconds
    eval_every: int = 64  # steps between the scores behind the accuracy-vs-seconds curves
    eval_limit: int = 2000  # test images per split in those scores

    def eval_specs(self) -> dict[str, str]:
        limit = self.eval_limit
        return {
            "random": f"cfmnist:random?limit={limit}",
            "swapped": f"cfmnist:swapped?sigma={self.sigma:g}&limit={limit}",
        }

    def at_size(self, images: int, epochs: int) -> StudyConfig:
        """The colour study's settings for one store size."""
        scores = [arg for spec in self.eval_specs().values() for arg in ("--eval-data", spec)]
        return dataclasses.replace(
            self.base, sigmas=(self.sigma,), train_images=images, epochs=epochs,
            extra_train_flags=(*self.base.extra_train_flags, *scores,
                               "--eval-every", str(self.eval_every)),
        )  # fmt: skip


# Two CPU cores: 1k/4k/16k images in about 3.4 hours of step time, encodes included (about
# 2.7 hours of wall time two runs at a time). On a GPU: up to all 60k training images, more
# epochs, stores from 40 steps (the encoder's start at full quality), equal compute at every
# size. The GPU encodes in batches of 512: smaller ones leave it waiting on launches.
CPU = ScalingConfig()
FULL = ScalingConfig(
    base=dataclasses.replace(BASE, encode_steps=40, encode_batch=512),
    sizes=((1024, 15), (4096, 8), (16384, 4), (60000, 2)),
    equal_compute=(1024, 4096, 16384, 60000),
)
# The curve's next point on a GPU in about ten minutes: all 60k training images with the CPU
# preset's per-image settings (10 steps from the encoder) and its rule of fewer epochs for more
# data (one), RandMix at AdvMix's seconds. No oracle: the ceiling already is a colour-blind
# classifier trained on these 60k images.
ALL_DATA = ScalingConfig(
    base=dataclasses.replace(BASE, encode_batch=512, methods=("nominal", "randmix", "advmix")),
    sizes=((60000, 1),),
    equal_compute=(60000,),
)
# The CPU preset's largest store alone (about 2.7 hours of step time on 2 cores, 95 min of wall
# time two runs at a time, from an encoded store): its verdict after a change of the method's
# defaults, without the smaller stores.
CPU_16K_4EP = ScalingConfig(sizes=((16384, 4),))
# That store at half the epochs (about an hour), the CPU preset's budget until the 4-epoch point
# showed that at 2 epochs even the colour-blind oracle closes only 87% of the gap to the
# 60k-image classifier: the budget, not the method, capped the score.
CPU_16K = ScalingConfig(sizes=((16384, 2),))
PRESETS = {"cpu": CPU, "full": FULL, "all-data": ALL_DATA, "cpu-16k": CPU_16K,
           "cpu-16k-4ep": CPU_16K_4EP}  # fmt: skip


def run_scaling(cfg: ScalingConfig, out: Path, workers: int = 1) -> list[dict]:
    """Encode every size's store, train and evaluate every arm; one row per run. ``workers``:
    training runs at once, each in its own process with its share of the cores."""
    out.mkdir(parents=True, exist_ok=True)
    # The last sitting's worker count goes with the settings: it changes what seconds mean.
    config = {**asdict(cfg), "workers": workers}
    (out / "scaling-config.json").write_text(json.dumps(config, indent=2) + "\n")
    timings = Timings(out / "timings.json")
    stores = {}
    for images, epochs in cfg.sizes:  # every store first: the reusable product of stage 1
        started = time.perf_counter()
        store = out / "stores" / f"sigma-{cfg.sigma:g}-n{images}"
        stores[images] = encode(cfg.at_size(images, epochs), cfg.sigma, store)
        timings.record(f"encode sigma-{cfg.sigma:g} n{images}", time.perf_counter() - started)
        store_report(store, cfg.base.generator, out / "stores" / f"{store.name}-report.json")
    results = []
    with RunPool(workers, timings) as pool:
        for images, epochs in cfg.sizes:
            results += every_arm(pool, timed_run, cfg.at_size(images, epochs), stores[images],
                                 out / "runs" / f"n{images}", images in cfg.equal_compute)  # fmt: skip
        for images, epochs in cfg.sizes:
            for seed in cfg.base.seeds:
                mix_report(stores[images], cfg.at_size(images, epochs),
                           out / "runs" / f"n{images}" / f"advmix-seed{seed}")  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def store_report(store: Path, generator: str, path: Path) -> dict:
    """``advmix store report`` of a store: do reconstructions and random mixes keep the class
    (judged by the 60k-image colour-blind classifier)?"""
    if not path.exists():
        advmix_cli(["store", "report", str(store), "--generator", generator,
                    "--limit", "512", "--json-out", str(path)])  # fmt: skip
    return json.loads(path.read_text())


def mix_report(store: Path, cfg: StudyConfig, run_dir: Path, attack_flags=()) -> dict:
    """The mixes AdvMix finds against a trained run's classifier, on the store's first 512
    samples: how often they fool it, and how often the 60k-image colour-blind classifier still
    sees their class (``advmix store report --against``; saved as the run's mix-report.json).
    ``attack_flags``: AdvMix options the run trained with beyond ``cfg``'s."""
    path = run_dir / "mix-report.json"
    if not path.exists():
        advmix_cli(["store", "report", str(store), "--generator", cfg.generator,
                    "--against", str(run_dir / "classifier.pt"),
                    "--attack-steps", str(cfg.attack_steps), *attack_flags, "--limit", "512",
                    "--json-out", str(path)])  # fmt: skip
    return json.loads(path.read_text())


def fooled_rate(run_dir: Path) -> float:
    """Share of an AdvMix run's training examples of its last epoch that a mix fooled."""
    records = metric_records(run_dir, "train")
    last = [r["fooled"] for r in records if r["epoch"] == records[-1]["epoch"]]
    return sum(last) / len(last) if last else float("nan")  # nan: no step was logged


def one_run(cfg: StudyConfig, method: str, store: Path, seed: int, runs: Path, timings,
            at_least_s: float | None = None) -> dict:  # fmt: skip
    row, seconds, step = timed_run(cfg, method, store, seed, runs, at_least_s)
    timings.record(step, seconds)
    return row


def timed_run(cfg: StudyConfig, method: str, store: Path, seed: int, runs: Path,
              at_least_s: float | None = None) -> tuple[dict, float, str]:  # fmt: skip
    """Train and evaluate one arm and seed (reusing what exists): its row, the seconds taken and
    the step they are recorded under (a ``RunPool`` job)."""
    run_dir = runs / f"{method}-seed{seed}"
    started = time.perf_counter()
    model = train(cfg, method, store, seed, run_dir, at_least_s)
    accuracy = evaluate(cfg, model, cfg.sigmas[0], run_dir / "eval.json")
    seconds = time.perf_counter() - started
    say(f"{ARMS[method].name:>26} n {cfg.train_images} seed {seed}: "
        + ", ".join(f"{s} {a:.3f}" for s, a in accuracy.items()) + f" ({seconds:.0f}s)")  # fmt: skip
    step = f"{method} n{cfg.train_images} seed-{seed}"
    return run_row(run_dir, cfg.train_images, method, seed), seconds, step


def run_row(run_dir: Path, images: int, method: str, seed: int) -> dict:
    """One finished run as a results row: its settings, training seconds and accuracies."""
    return {
        "images": images, "method": method, "seed": seed, "epochs": run_epochs(run_dir),
        "train_s": round(train_seconds(run_dir), 3), "run": str(run_dir),
        **accuracies(run_dir / "eval.json"),
    }  # fmt: skip


def planned_runs(cfg: ScalingConfig) -> list[tuple[int, str, int]]:
    """(images, method, seed) of every run the study makes, in its order."""
    return [
        (images, method, seed)
        for images, _ in cfg.sizes
        for method in (
            *cfg.base.methods,
            *(("randmix-long",) if images in cfg.equal_compute else ()),
        )
        for seed in cfg.base.seeds
    ]


def finished_runs(cfg: ScalingConfig, out: Path) -> tuple[list[dict], list[tuple[int, str, int]]]:
    """The rows of the planned runs under ``out`` that have been evaluated, and the planned runs
    that have not; starts nothing (a study stopped early, say at the end of a GPU lease)."""
    rows, missing = [], []
    for images, method, seed in planned_runs(cfg):
        run_dir = out / "runs" / f"n{images}" / f"{method}-seed{seed}"
        if (run_dir / "eval.json").exists():
            rows.append(run_row(run_dir, images, method, seed))
        else:
            missing.append((images, method, seed))
    return rows, missing


def curves(results: list[dict], specs: dict[str, str]) -> list[dict]:
    """Every run's scores against its training seconds: {images, method, seed, points}, each
    point {train_s, split: accuracy} for the splits of ``specs`` (split -> --eval-data spec)."""
    out = []
    for row in results:
        points = [
            {"train_s": r["train_s"], **{split: r["accuracy"][s] for split, s in specs.items()}}
            for r in metric_records(Path(row["run"]), "eval")
        ]
        out.append({k: row[k] for k in ("images", "method", "seed")} | {"points": points})
    return out

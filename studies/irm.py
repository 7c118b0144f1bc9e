"""IRM's Colored Fashion-MNIST benchmark: ERM, ERM on grey images, IRMv1, RandMix and AdvMix.

    python -m studies.irm                           # preset small, the CPU preset: every method
                                                    # on 6,000 images (hours on 2 cores)
    python -m studies.irm --preset small-biased-gan # RandMix, AdvMix, generator tuned on irmcf:train
    python -m studies.irm --preset baselines        # ERM, grey, IRMv1 on all 54,000 images
    python -m studies.irm --preset all-data-cpu     # every method on all 54,000 images (a day)
    python -m studies.irm --preset gpu --device cuda  # a StyleGAN2 trained from scratch first
    python -m studies.irm --page-only               # docs/ rewritten from docs/records/irm

The data is ``irmcf:`` (``advmix/irmcf.py``), built as Ahuja et al. (2020) built it. One store
per split is encoded with the Beam job and serves every method and seed; the ``env`` column of
the training store's index gives IRMv1 its environments. Every step is skipped when its output
exists, so a stopped study continues (training runs resume from their checkpoints). Each
evaluated run leaves its records (``run.json``, ``eval.json``) in ``docs/records/irm/<preset>``,
from which ``docs/results-irm.json`` and ``docs/irm-benchmark.md`` are written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from advmix import shipped
from cli.main import main as advmix_cli
from studies.irm_diagnostics import mix_diagnostics, record_generator, store_statistics
from studies.study import equal_compute_epochs, extend_to_seconds, say, train_seconds

# Name in results-irm.json -> advmix train options (same classifier, epochs and batch for all).
METHODS = {
    "ERM": ("--method", "nominal"),
    "ERM-grayscale": ("--method", "nominal", "--grayscale"),
    "IRMv1": ("--method", "irm"),
    "RandMix": ("--method", "randmix"),
    "AdvMix": ("--method", "advmix"),
    # Mixes without the nominal images: the classifier never sees a real image, whose colour
    # it could learn apart from the generated images'.
    "RandMix-mixes": ("--method", "randmix", "--train-on", "mixes"),
    "AdvMix-mixes": ("--method", "advmix", "--train-on", "mixes+random"),
    # Equal compute: RandMix resumed with more epochs until it has spent the training seconds
    # of the same seed's AdvMix run (AT_ADVMIX_SECONDS names the pair).
    "RandMix-long": ("--method", "randmix"),
    "RandMix-mixes-long": ("--method", "randmix", "--train-on", "mixes"),
}
# long method -> (the same method at the preset's epochs, the AdvMix run whose seconds it gets)
AT_ADVMIX_SECONDS = {"RandMix-long": ("RandMix", "AdvMix"),
                     "RandMix-mixes-long": ("RandMix-mixes", "AdvMix-mixes")}  # fmt: skip
RECORDS = Path("docs/records/irm")
WITH_MIXES_ONLY = tuple(METHODS)  # the five core methods, the mixes-only ones, equal compute


@dataclass(frozen=True)
class IRMStudyConfig:
    preset: str
    methods: tuple[str, ...] = ("ERM", "ERM-grayscale", "IRMv1", "RandMix", "AdvMix")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    data_seed: int = 0  # the irmcf draws (label noise, colours, environments), fixed for all runs
    # A slice of irmcf:train (environment 0 first): offset 27000 - n, limit 2n takes the last n
    # images of environment 0 and the first n of environment 1, each in Fashion-MNIST's order.
    train_slice: tuple[int, int] | None = None  # (offset, limit); None: all 54,000
    generator: str = str(shipped.GENERATOR)
    gan_iterations: int = 0  # > 0: train a StyleGAN2 on irmcf:train first and use it
    gan_init: str | None = None  # fine-tune that StyleGAN2 from this generator file
    gan_data: str = "train"  # the irmcf split it learns from, without labels
    encode_steps: int = 10
    encode_init: str = "encoder"  # "encoder": the shipped encoder's start (shipped G only)
    epochs: int = 2
    batch_size: int = 64
    attack_steps: int = 5
    device: str = "cpu"


PRESETS = {
    # What 2 CPU cores give in a few hours: 3,000 images per training environment; the shipped
    # generator fine-tuned (3,000 iterations, ~20 min) on irmcf's training items with colours
    # independent of the label, as the shipped one was trained on cfmnist's.
    "small": IRMStudyConfig(
        "small",
        methods=WITH_MIXES_ONLY,
        train_slice=(24000, 6000),
        gan_iterations=3000,
        gan_init=str(shipped.GENERATOR),
        gan_data="train-random",
        encode_steps=10,
        epochs=4,
    ),
    # The same with the generator fine-tuned on irmcf:train itself, colours as biased as the
    # classifiers see them: does colour stay in its fine styles?
    "small-biased-gan": IRMStudyConfig(
        "small-biased-gan",
        methods=("RandMix", "AdvMix"),
        train_slice=(24000, 6000),
        gan_iterations=3000,
        gan_init=str(shipped.GENERATOR),
        encode_steps=10,
        epochs=4,
    ),
    # Methods that never read the styles: a store encoded with one step serves them, its
    # images being the exact irmcf images.
    "baselines": IRMStudyConfig(
        "baselines", methods=("ERM", "ERM-grayscale", "IRMv1"), encode_steps=1
    ),  # fmt: skip
    # Not a few hours: at the small preset's rates (one AdvMix-mixes seed, 4 epochs of 6,000
    # images, ~19 min on shared cores) its ten AdvMix runs alone take 9-14 hours on 2 cores.
    "all-data-cpu": IRMStudyConfig(
        "all-data-cpu",
        methods=WITH_MIXES_ONLY,
        gan_iterations=3000,
        gan_init=str(shipped.GENERATOR),
        gan_data="train-random",
        encode_steps=10,
        attack_steps=3,
    ),  # fmt: skip
    # A generator trained from scratch on the colour-free training items, every image.
    "gpu": IRMStudyConfig(
        "gpu",
        methods=WITH_MIXES_ONLY,
        gan_iterations=30000,
        gan_data="train-random",
        encode_steps=100,
        encode_init="mean",
        epochs=10,
        device="cuda",
    ),  # fmt: skip
}


def spec(split: str, cfg: IRMStudyConfig) -> str:
    options = [f"seed={cfg.data_seed}"] if cfg.data_seed else []
    if split == "train" and cfg.train_slice:
        options += [f"offset={cfg.train_slice[0]}", f"limit={cfg.train_slice[1]}"]
    return f"irmcf:{split}" + ("?" + "&".join(options) if options else "")


def generator(cfg: IRMStudyConfig, out: Path) -> str:
    """The shipped generator, or one trained without labels on irmcf:train with its k chosen
    by ``advmix gan evaluate``."""
    if not cfg.gan_iterations:
        return cfg.generator
    chosen = out / "gan" / "G.pt"
    if chosen.exists():
        return str(chosen)
    run = out / "gan" / "run"
    resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
    # Without labels, on every training image (the slice is only what the classifiers see).
    data = spec(cfg.gan_data, replace(cfg, train_slice=None))
    start = ["--init-from", cfg.gan_init] if cfg.gan_init else []
    say(f"training a StyleGAN2 on {data} -> {run}")
    advmix_cli(["gan", "train", "--dataset", data, "--out", str(run),
                "--iterations", str(cfg.gan_iterations), "--device", cfg.device,
                "--no-progress", *start, *resume])  # fmt: skip
    advmix_cli(["gan", "evaluate", "--generator", str(run / "generator.pt"),
                "--real", spec("test", cfg), "--real-floor", data,
                "--grids", str(out / "gan"), "--write-k", str(chosen)])  # fmt: skip
    return str(chosen)


def encode_steps(cfg: IRMStudyConfig, split: str) -> int:
    """Only the training store's styles are mixed; the test store serves its images'
    statistics, which one step keeps exact."""
    return cfg.encode_steps if split == "train" else 1


def store_path(cfg: IRMStudyConfig, split: str, out: Path) -> Path:
    return out / "stores" / f"steps{encode_steps(cfg, split)}-{cfg.encode_init}" / split


def encode(cfg: IRMStudyConfig, split: str, G: str, out: Path) -> Path:
    store = store_path(cfg, split, out)
    if (store / "manifest.json").exists():
        say(f"reusing the store {store}")
        return store
    from pipeline.encode import configure_logging
    from pipeline.encode import run as encode_job

    init = (["--init", "encoder", "--encoder", str(shipped.ENCODER)]
            if cfg.encode_init == "encoder" else [])  # fmt: skip
    say(f"encoding {spec(split, cfg)} into {store}")
    configure_logging()
    counts = encode_job(["--input", spec(split, cfg), "--output", str(store), "--generator", G,
                         "--features", str(shipped.FEATURES), "--steps", str(encode_steps(cfg, split)),
                         "--batch-size", "64", "--shard-size", "1024", "--device", cfg.device,
                         *init])  # fmt: skip
    say(f"encoded {counts['encoded']}, rejected {counts['rejected']}")
    return store


def colour_following(model_path: Path, cfg: IRMStudyConfig) -> dict:
    """Per split, the share of the classifier's predictions equal to the image's colour
    (1 red, 0 green): ~1 for a colour rule, (1 - p_e)-like for a colour-blind one."""
    import torch

    from advmix.classifiers import load_classifier
    from advmix.datasets import load
    from advmix.irmcf import colour_of

    torch.set_num_threads(1)
    model, _ = load_classifier(model_path)
    out = {}
    for split in ("train", "test"):
        data = load(spec(split, cfg))
        x = torch.from_numpy(data.images)
        with torch.no_grad():
            pred = torch.cat([model(x[i : i + 512].float() / 255).argmax(1)
                              for i in range(0, len(x), 512)]).numpy()  # fmt: skip
        out[split] = round(float((pred == colour_of(data.images)).mean()), 4)
    return out


def follow_colours(cfg: IRMStudyConfig, out: Path, records: Path) -> None:
    """records/<method>/seed-<s>/colour.json for every evaluated run that lacks one."""
    for result in sorted(records.glob("*/seed-*/eval.json")):
        target = result.parent / "colour.json"
        model = out / "runs" / result.parent.parent.name / result.parent.name / "classifier.pt"
        if not target.exists() and model.exists():
            target.write_text(json.dumps(colour_following(model, cfg)) + "\n")


def diagnose(store: Path, G: str, records: Path) -> dict:
    """records/mixes.json: ``mix_diagnostics`` of the training store (computed once)."""
    path = records / "mixes.json"
    if not path.exists():
        records.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(mix_diagnostics(store, G), indent=2) + "\n")
    return json.loads(path.read_text())


def train_and_evaluate(cfg: IRMStudyConfig, method: str, seed: int, G: str, store: Path,
                       runs: Path, records: Path) -> dict:  # fmt: skip
    """Train (or reuse) and evaluate one method and seed; a method of ``AT_ADVMIX_SECONDS``
    first has its pair trained, then runs until it has spent the AdvMix run's seconds."""
    run_dir, epochs, at_least_s = runs / method / f"seed-{seed}", cfg.epochs, None
    if method in AT_ADVMIX_SECONDS:
        for other in AT_ADVMIX_SECONDS[method]:  # the pair first: its runs set this one's
            train_and_evaluate(cfg, other, seed, G, store, runs,
                               records.parent.parent / other / f"seed-{seed}")  # fmt: skip
        randmix, advmix = (runs / other / f"seed-{seed}" for other in AT_ADVMIX_SECONDS[method])
        epochs = equal_compute_epochs(advmix, randmix, cfg.epochs)
        at_least_s = train_seconds(advmix)
    model = run_dir / "classifier.pt"

    def train_to(epochs: int) -> None:
        resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
        advmix_cli(["train", "--store", str(store), "--generator", G, *METHODS[method],
                    "--epochs", str(epochs), "--batch-size", str(cfg.batch_size),
                    "--attack-steps", str(cfg.attack_steps), "--seed", str(seed),
                    "--device", cfg.device, "--no-progress", "--out", str(run_dir),
                    *resume])  # fmt: skip

    if not model.exists():
        say(f"training {method}, seed {seed} -> {run_dir}")
        train_to(epochs)
    if at_least_s is not None:
        extend_to_seconds(run_dir, at_least_s, train_to)
    result = run_dir / "eval.json"
    if not result.exists():
        advmix_cli(["evaluate", "--checkpoint", str(model), "--data", spec("train", cfg),
                    "--data", spec("test", cfg), "--device", cfg.device,
                    "--json-out", str(result)])  # fmt: skip
    records.mkdir(parents=True, exist_ok=True)
    for name in ("run.json", "eval.json"):
        shutil.copyfile(run_dir / name, records / name)
    if not (records / "colour.json").exists():
        (records / "colour.json").write_text(json.dumps(colour_following(model, cfg)) + "\n")
    return accuracies(records)


def accuracies(records: Path) -> dict:
    """{"train": .., "test": ..} of one run's eval.json."""
    rows = json.loads((records / "eval.json").read_text())["results"]
    return {row["data"].split(":")[1].split("?")[0]: row["accuracy"] for row in rows}


def collect(records: Path, methods=tuple(METHODS)) -> dict:
    """results-irm.json's content: per method the mean (and std over seeds) of the train and
    test accuracies of every evaluated run under ``records/<method>/seed-<s>``."""
    out = {}
    for method in methods:
        runs = [accuracies(p.parent) for p in sorted((records / method).glob("seed-*/eval.json"))]
        if not runs:
            continue
        row = {}
        for split in ("train", "test"):
            values = [r[split] for r in runs]
            row[split] = round(statistics.fmean(values), 4)
            row[f"{split}_std"] = round(statistics.pstdev(values), 4)
        colour = [
            json.loads(p.read_text()) for p in sorted((records / method).glob("seed-*/colour.json"))
        ]
        if colour:
            row["follows_colour"] = {split: round(statistics.fmean(c[split] for c in colour), 4)
                                     for split in ("train", "test")}  # fmt: skip
        out[method] = {**row, "seeds": len(runs)}
    return {"methods": out}


def run(cfg: IRMStudyConfig, out: Path, records: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "irm-config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    G = generator(cfg, out)
    stores = {split: encode(cfg, split, G, out) for split in ("train", "test")}
    records.mkdir(parents=True, exist_ok=True)
    if cfg.gan_iterations:
        record_generator(G, records)
    data = {split: store_statistics(store) for split, store in stores.items()}
    (records / "data.json").write_text(json.dumps(data, indent=2) + "\n")
    diagnose(stores["train"], G, records)
    for seed in cfg.seeds:  # seeds outermost: a stopped study has every method at equal seeds
        for method in cfg.methods:
            acc = train_and_evaluate(cfg, method, seed, G, stores["train"], out / "runs",
                                     records / method / f"seed-{seed}")  # fmt: skip
            say(f"{method:>14} seed {seed}: train {acc['train']:.4f}, test {acc['test']:.4f}")
    (records / "irm-config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return collect(records)


def write_docs(records: Path, docs: Path = Path("docs")) -> dict:
    from studies.irm_page import page

    results = collect(records)
    if not results["methods"]:
        sys.exit(f"Error: no evaluated runs under {records}/<method>/seed-<s>/eval.json")
    config = json.loads((records / "irm-config.json").read_text())
    results["preset"] = config["preset"]
    (docs / "results-irm.json").write_text(json.dumps(results, indent=2) + "\n")
    # Sibling presets (<preset>-<variant>): the same runs with other generators.
    others = {path: collect(path) for path in sorted(records.parent.glob(f"{records.name}-*"))}
    (docs / "irm-benchmark.md").write_text(page(results, config, records, others))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="small")
    parser.add_argument("--out", type=Path, default=Path("runs/irm"))
    parser.add_argument("--records", type=Path, default=None,
                        help=f"run records [default: {RECORDS}/<preset>]")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=None, help="first N seeds of the preset's 5")
    parser.add_argument("--seed-list", default=None,
                        help="comma-separated training seeds, e.g. 3,4 (two processes can "
                             "split a preset's seeds)")  # fmt: skip
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {', '.join(METHODS)} [default: the preset's]")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--diagnose", action="store_true",
                        help="only measure what the generator's mixes do (records/mixes.json)")  # fmt: skip
    parser.add_argument("--page-only", action="store_true",
                        help="rewrite docs/results-irm.json and docs/irm-benchmark.md")  # fmt: skip
    args = parser.parse_args()
    cfg = PRESETS[args.preset]
    if args.seeds is not None:
        cfg = replace(cfg, seeds=cfg.seeds[: max(1, args.seeds)])
    if args.seed_list is not None:
        try:
            cfg = replace(cfg, seeds=tuple(int(x) for x in args.seed_list.split(",")))
        except ValueError:
            parser.error(f"--seed-list: not a comma-separated list of integers: {args.seed_list!r}")
    if args.methods is not None:
        methods = tuple(m for m in args.methods.split(",") if m)
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            parser.error(
                f"--methods: {', '.join(unknown) or 'none given'}; known: {', '.join(METHODS)}"
            )
        cfg = replace(cfg, methods=methods)
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    if args.device is not None:
        cfg = replace(cfg, device=args.device)
    records = args.records or RECORDS / cfg.preset
    if args.diagnose:
        G = cfg.generator if not cfg.gan_iterations else str(args.out / cfg.preset / "gan" / "G.pt")
        print(json.dumps(diagnose(store_path(cfg, "train", args.out / cfg.preset), G, records)))
        follow_colours(cfg, args.out / cfg.preset, records)
        return
    if not args.page_only:
        run(cfg, args.out / cfg.preset, records)
    print(json.dumps(write_docs(records), indent=2))


if __name__ == "__main__":
    main()

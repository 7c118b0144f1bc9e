"""The paper's CelebA table: one classifier per attribute and method, from one store per split.

    python -m studies.celeba --root /data/celeba --generator faces-G.pt --out runs/celeba \\
        --attributes Smiling,Male,Young,Eyeglasses --features vgg16-397923af.pth \\
        --arch resnet18 --input-size 128 --batch-size 128 [--train-images N] [--device cuda]

Encodes ``celeba:train`` and ``celeba:test`` (every attribute kept in each store), trains every
method of the paper's table (nominal, AT 4/255 and 8/255, RandMix, AdvMix) for each attribute
with ``--target``, evaluates each classifier on the test store (accuracy, and robust accuracy
under AdvMix), and writes ``OUT/table.md``: methods as rows, attributes as columns, as in the
paper. Finished steps are reused, so a stopped run continues; ``--table-only`` only collects
the runs it finds at ``OUT/runs/<attribute>/<method>/eval.json`` (methods ``nominal``,
``at-4``, ``at-8``, ``randmix``, ``advmix``), whoever wrote them, and lists the cells it could
not fill under the table. The commands and costs for the full dataset: ``docs/celeba.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from advmix.classifiers import ARCHITECTURES
from cli.main import main as advmix_cli
from studies.study import ARMS, Timings, say

METHODS = ("nominal", "at-4", "at-8", "randmix", "advmix")


@dataclass
class CelebAConfig:
    root: str
    generator: str
    attributes: tuple[str, ...] = ("Smiling",)
    methods: tuple[str, ...] = METHODS
    train_images: int | None = None  # None: the whole split
    test_images: int | None = None
    # The perceptual loss's VGG16: ImageNet's (a path, a URL, or "imagenet" for torchvision's
    # download). The encode job's own default is the Fashion-MNIST network, useless on faces.
    features: str = "imagenet"
    encode_steps: int = 100
    encode_batch: int = 64
    arch: str = "smallcnn"  # advmix train's choices and defaults
    input_size: int | None = None
    epochs: int = 10
    batch_size: int = 64
    attack_steps: int = 5
    seed: int = 0
    extra_encode_flags: tuple[str, ...] = ()  # e.g. --init encoder --encoder E.pt, Beam options
    extra_train_flags: tuple[str, ...] = field(default_factory=tuple)  # e.g. --arch-weights W


def encode(cfg: CelebAConfig, split: str, limit: int | None, out: Path) -> Path:
    store = out / "stores" / split
    if (store / "manifest.json").exists():
        say(f"reusing the store {store}")
        return store
    from pipeline.encode import configure_logging
    from pipeline.encode import run as encode_job

    spec = f"celeba:{split}?root={cfg.root}" + (f"&limit={limit}" if limit else "")
    say(f"encoding {spec} into {store}")
    configure_logging()
    counts = encode_job(
        ["--input", spec, "--output", str(store), "--generator", cfg.generator,
         "--features", cfg.features, "--steps", str(cfg.encode_steps),
         "--batch-size", str(cfg.encode_batch), "--shard-size", str(4 * cfg.encode_batch),
         *cfg.extra_encode_flags]
    )  # fmt: skip
    say(f"encoded {counts['encoded']}, rejected {counts['rejected']}")
    return store


def train_and_evaluate(cfg: CelebAConfig, method: str, attribute: str, stores: dict,
                       run_dir: Path) -> dict:  # fmt: skip
    model = run_dir / "classifier.pt"
    if not model.exists():
        say(f"training {ARMS[method].name} for {attribute} -> {run_dir}")
        resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
        size = ["--input-size", str(cfg.input_size)] if cfg.input_size else []
        advmix_cli(
            ["train", "--store", str(stores["train"]), "--generator", cfg.generator,
             *ARMS[method].flags, "--target", attribute, "--arch", cfg.arch, *size,
             "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
             "--attack-steps", str(cfg.attack_steps), "--seed", str(cfg.seed),
             "--out", str(run_dir), *cfg.extra_train_flags, *resume]
        )  # fmt: skip
    result = run_dir / "eval.json"
    if not result.exists():
        advmix_cli(["evaluate", "--checkpoint", str(model), "--store", str(stores["test"]),
                    "--attack", "advmix", "--generator", cfg.generator,
                    "--attack-steps", str(cfg.attack_steps), "--json-out", str(result)])  # fmt: skip
    row = json.loads(result.read_text())["results"][0]
    return {"method": method, "attribute": attribute, "accuracy": row["accuracy"],
            "robust_accuracy": row.get("robust_accuracy"), "n": row["n"]}  # fmt: skip


def asked(out: Path) -> dict:
    """The settings the study in ``out`` was started with ({} when the runs there came from
    the commands of docs/celeba.md)."""
    config = out / "celeba-config.json"
    return json.loads(config.read_text()) if config.exists() else {}


def collect(out: Path) -> list[dict]:
    """Every evaluated run of the table's methods under ``out/runs/<attribute>/<method>``,
    attributes in the order the study was asked for (then any others, by name)."""
    found = sorted(p for p in (out / "runs").glob("*/*/eval.json") if p.parent.name in METHODS)
    names = dict.fromkeys([*asked(out).get("attributes", []),
                           *sorted(p.parent.parent.name for p in found)])  # fmt: skip
    order = {name: i for i, name in enumerate(names)}
    rows = []
    for result in sorted(found, key=lambda p: order[p.parent.parent.name]):
        row = json.loads(result.read_text())["results"][0]
        rows.append({"attribute": result.parent.parent.name, "method": result.parent.name,
                     "accuracy": row["accuracy"], "robust_accuracy": row.get("robust_accuracy"),
                     "n": row["n"]})  # fmt: skip
    return rows


def gaps(out: Path, rows: list[dict]) -> list[str]:
    """A line for each cell the table leaves blank (an attribute and method the study was
    asked for, or that has a row or a run folder, without an eval.json) and each run folder it
    leaves out (a name that is not one of its methods)."""
    config = asked(out)
    folders = sorted(p for p in (out / "runs").glob("*/*") if p.is_dir())
    present = [*(r["method"] for r in rows), *(p.name for p in folders)]
    methods = config.get("methods") or [m for m in METHODS if m in present]
    attributes = dict.fromkeys([*config.get("attributes", []), *(r["attribute"] for r in rows),
                                *(p.parent.name for p in folders if p.name in METHODS)])  # fmt: skip
    done = {(r["method"], r["attribute"]) for r in rows}
    lines = []
    for attribute in attributes:
        for method in methods:
            run_dir = out / "runs" / attribute / method
            if (method, attribute) in done:
                continue
            why = ("trained, not evaluated (advmix evaluate --json-out writes it)"
                   if (run_dir / "classifier.pt").exists() else "not run")  # fmt: skip
            lines.append(f"{run_dir / 'eval.json'} is missing: {why}")
    for run_dir in folders:
        if run_dir.name not in METHODS:
            lines.append(f"{run_dir} is left out: not one of the table's methods "
                         f"({', '.join(METHODS)})")  # fmt: skip
    return lines


def table(rows: list[dict]) -> str:
    """The paper's layout: methods as rows, attributes as columns, accuracy in % (robust
    accuracy under AdvMix in parentheses)."""
    attributes = list(dict.fromkeys(r["attribute"] for r in rows))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    cells = {(r["method"], r["attribute"]): r for r in rows}
    lines = ["| method | " + " | ".join(attributes) + " |",
             "|---|" + "---|" * len(attributes)]  # fmt: skip
    for method in methods:
        values = []
        for attribute in attributes:
            r = cells.get((method, attribute))
            robust = r and r["robust_accuracy"] is not None
            values.append("" if r is None else f"{100 * r['accuracy']:.2f}"
                          + (f" ({100 * r['robust_accuracy']:.2f})" if robust else ""))  # fmt: skip
        lines.append(f"| {ARMS[method].name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def write_table(out: Path, rows: list[dict]) -> str:
    """``out/table.md``: the table, then a line for each cell it leaves blank and each run it
    leaves out. Returns what it wrote."""
    notes = gaps(out, rows)
    text = table(rows)
    if notes:
        text += "\n\nNot in the table:\n" + "\n".join(f"- {note}" for note in notes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    return text


def run(cfg: CelebAConfig, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "celeba-config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    timings = Timings(out / "timings.json")
    stores = {}
    for split, limit in (("train", cfg.train_images), ("test", cfg.test_images)):
        started = time.perf_counter()
        stores[split] = encode(cfg, split, limit, out)
        timings.record(f"encode {split}", time.perf_counter() - started)
    rows = []
    for attribute in cfg.attributes:
        for method in cfg.methods:
            started = time.perf_counter()
            row = train_and_evaluate(cfg, method, attribute, stores,
                                     out / "runs" / attribute / method)  # fmt: skip
            timings.record(f"{method} {attribute}", time.perf_counter() - started)
            rows.append(row)
            say(f"{ARMS[method].name:>10} {attribute}: accuracy {row['accuracy']:.4f}, "
                f"robust {row['robust_accuracy']:.4f}")  # fmt: skip
    write_table(out, rows)
    return rows


def main() -> None:
    defaults = CelebAConfig(root="", generator="")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/celeba"))
    parser.add_argument("--table-only", action="store_true", help="collect the runs in OUT")
    parser.add_argument("--root", help="CelebA folder (img_align_celeba/, list_*.txt)")
    parser.add_argument("--generator", help="a face StyleGAN2 (advmix gan import) with its k")
    parser.add_argument("--attributes", default="Smiling")
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--features", default=defaults.features,
                        help="VGG16 weights of the perceptual loss: a path, a URL or imagenet "
                        "(torchvision's download)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=defaults.encode_steps,
                        help="inversion steps")  # fmt: skip
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default=defaults.arch)
    parser.add_argument("--input-size", type=int, default=defaults.input_size,
                        help="the classifier's input size [default: the store's images]")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="training examples per step")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.table_only:
        rows = collect(args.out)
        if not rows:
            sys.exit(f"Error: no evaluated runs in {args.out}: the table reads "
                     f"{args.out / 'runs'}/<attribute>/<method>/eval.json "
                     f"(methods {', '.join(METHODS)})")  # fmt: skip
        print(write_table(args.out, rows))
        return
    if not args.root or not args.generator:
        parser.error("--root and --generator are needed (or --table-only)")
    cfg = CelebAConfig(
        root=args.root, generator=args.generator,
        attributes=tuple(a for a in args.attributes.split(",") if a),
        train_images=args.train_images, test_images=args.test_images, features=args.features,
        encode_steps=args.steps, arch=args.arch, input_size=args.input_size, epochs=args.epochs,
        batch_size=args.batch_size, extra_encode_flags=("--device", args.device),
        extra_train_flags=("--device", args.device, "--no-progress"),
    )  # fmt: skip
    run(cfg, args.out)
    print((args.out / "table.md").read_text(), end="")


if __name__ == "__main__":
    main()

"""``make demo``: the end-to-end run a new user starts with (minutes on 2 CPU cores).

Encodes ~1000 biased-colour Colored Fashion-MNIST training images with the Beam job (Algorithm
1 from the shipped encoder's prediction) into one
latent store, trains nominal, RandMix and AdvMix classifiers from that store over three seeds
(and RandMix for AdvMix's training seconds), evaluates them on the ``iid``, ``random`` and
``swapped`` test colours, and writes ``demo-out/report.md`` with the table (mean ± std), the
equal-compute verdict, a bar plot and image grids.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from advmix.datasets import find_root
from advmix.errors import DataError
from cli.main import main as advmix_cli
from studies.pool import add_workers_option, checked_workers
from studies.report import bar_plot, equal_compute_verdict, markdown_table
from studies.study import ARMS, DEMO, StudyConfig, encode_start, run_study, say


def write_report(cfg: StudyConfig, out: Path, results: list[dict], wall_s: float) -> Path:
    names = {key: method.name for key, method in ARMS.items()}
    sigma = cfg.sigmas[0]
    store = out / "stores" / f"sigma-{sigma:g}"
    advmix_cli(
        ["store", "report", str(store), "--generator", cfg.generator, "--limit", "512",
         "--grid", str(out / "reconstructions.png"), "--json-out", str(out / "encoding.json")]
    )  # fmt: skip
    encoding = json.loads((out / "encoding.json").read_text())
    grids = sorted((out / "runs" / f"sigma-{sigma:g}" / "advmix-seed0").glob("grid-epoch*.png"))
    if grids:
        shutil.copy(grids[-1], out / "adversarial-mixes.png")
    bar_plot(results, names, out / "accuracy.png")
    table = markdown_table(results, names)
    verdict = equal_compute_verdict(results, names)
    seeds = ", ".join(map(str, cfg.seeds))
    start = encode_start(cfg)
    tested = f"the first {cfg.test_limit:,}" if cfg.test_limit else "all 10k"
    text = f"""# AdvMix demo report

Classifiers trained on {cfg.train_images} Colored Fashion-MNIST training images whose colour
is biased by class (sigma {sigma:g}), from one latent store encoded by the Beam job with the
shipped generator ({cfg.encode_steps} inversion steps from {start}). Tested on {tested} test images with the
same biased colours (`iid`), random colours (`random`) and another class's colours (`swapped`).
Wall time of the whole demo: {wall_s / 60:.1f} min. Mean ± standard deviation over training
seeds {seeds} (one store); "RandMix, AdvMix's seconds" trains RandMix until it has spent at
least each seed's AdvMix training seconds (whole epochs).

{table}

At equal compute (a lead within the larger standard deviation is called level):

{verdict}

![accuracy](accuracy.png)

## Latents (first {encoding["samples"]} samples of the store)

Mean reconstruction PSNR {encoding["psnr_mean_db"]} dB; a colour-blind real-data classifier
gives the true class to {encoding["classifier_accuracy_on_originals"]:.1%} of the originals,
{encoding["class_kept_reconstruction"]:.1%} of the reconstructions and
{encoding["class_kept_random_mix"]:.1%} of random mixes; the mix's colour follows the random
fine styles for {encoding["colour_follows_random_fine_source"]:.1%}.

Rows: originals, reconstructions `dec(w)`, random mixes `dec(w_coarse, map(z)_fine)`.

![reconstructions](reconstructions.png)

## AdvMix training mixes (last epoch)

Rows: nominal images, reconstructions, AdvMix worst-case mixes against the model, RandMix mixes.

![adversarial mixes](adversarial-mixes.png)

Reproduce: `make demo` (settings in `study-config.json`).
"""
    (out / "report.md").write_text(text)
    print("\n" + table + "\n\n" + verdict + "\n")
    return out / "report.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--fresh", action="store_true", help="delete OUT first")
    # One run at a time by default: README's demo table was measured that way.
    add_workers_option(parser)
    args = parser.parse_args()
    checked_workers(parser, args.workers)
    try:  # the demo claims quality: it needs the full dataset, not the tests' subset
        find_root("cfmnist")
    except DataError as exc:
        sys.exit(f"Error: {exc}")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    started = time.perf_counter()
    results = run_study(DEMO, args.out, args.workers)
    report = write_report(DEMO, args.out, results, time.perf_counter() - started)
    say(f"done in {(time.perf_counter() - started) / 60:.1f} min; report: {report}")


if __name__ == "__main__":
    main()

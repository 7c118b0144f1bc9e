"""``make reproduce``: the Colored Fashion-MNIST studies behind docs/RESULTS.md.

``--study scaling`` (the default, ``docs/RESULTS.md``): nominal, RandMix, AdvMix and the
colour-blind oracle on stores of growing size at the strongest colour correlation, three seeds,
against the fixed ceiling of a colour-blind classifier trained on all 60k grey images; RandMix
also at AdvMix's wall-clock, and accuracy against training seconds (``studies.scaling``).

``--study sigma`` (``docs/results-sigma.md``): every method (nominal, AT 4/255 and 8/255, mixup,
RandMix, AdvMix, oracle) at three strengths of the colour correlation, 1024 images
(``studies.study``).

``--device cuda`` picks each study's ``full`` preset, a CPU its ``cpu`` preset (on 2 cores,
about 2.7 hours of wall time for the scaling study with ``--workers 2`` and 1.2 for the
sweep); ``--preset all-data`` runs the scaling study on all 60k training images alone (about
ten minutes of one GPU, ``docs/results-60k.md``). Steps that already have outputs under
``--out`` are skipped, so a study can be stopped and restarted; the page states the summed step
times. ``--page-only`` writes the scaling page from the runs that finished and names the
missing ones (a study cut short by the end of a GPU lease, its run folders copied back).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from studies import levers, scaling
from studies.pool import add_workers_option, checked_workers
from studies.report import (
    ceiling_gap,
    compute_plot,
    diagnostics_table,
    equal_compute_notes,
    equal_compute_text,
    markdown_table,
    mean_std,
    oracle_gap,
    sigma_plot,
    size_plot,
    size_table,
    standing,
    unfinished,
)
from studies.study import (
    ARMS,
    PRESETS,
    REFERENCE,
    Timings,
    encode_start,
    equal_compute_epochs,
    reference_accuracy,
    run_study,
    say,
)


def machine() -> str:
    if torch.cuda.is_available():
        return (
            f"{torch.cuda.get_device_name(0)} (CUDA), {platform.processor() or platform.machine()}"
        )
    import os

    return f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU"


def recorded_machine(results: list[dict]) -> tuple[str, str]:
    """The device the runs' records name, and it with their versions in words (``--page-only``
    may write the page on another machine than the one that trained)."""
    records = [json.loads((Path(r["run"]) / "run.json").read_text()) for r in results]
    seen = sorted({(r["device"], r["versions"]["torch"], r["versions"]["python"]) for r in records})
    words = "; ".join(f"device {d}, torch {t}, Python {p}" for d, t, p in seen)
    return "/".join(dict.fromkeys(d for d, _, _ in seen)), f"the machine its runs record ({words})"


def percent(share: float) -> str:
    """A share in whole percent; a share that rounds to zero is 0%, not -0%."""
    return f"{round(share, 2) + 0.0:.0%}"


def gap_text(gap: dict, names: dict[str, str]) -> str:
    closed, acc, to_reference = gap["gap_closed"], gap["accuracy"], gap["reference_gap_closed"]
    order = sorted(closed, key=closed.get, reverse=True)
    rows = "\n".join(
        f"| {names[m]} | {acc[m]:.3f} | {percent(closed[m])} | {percent(to_reference[m])} |"
        for m in order
    )
    return f"""## Oracle gap at the strongest correlation (sigma {gap["sigma"]:g})

Share of the gap between the nominal classifier and the colour-blind oracle on
`{gap["split"]}` colours that each method closes (mean accuracies).
The study's oracle gets the same images and epochs as every other method, which leaves it
undertrained; the last column uses a stronger ceiling instead: the shipped colour-blind
classifier (`{REFERENCE.name}`, trained on all 60k grey training images), which scores
{gap["reference"]:.3f} on `{gap["split"]}`.

| method | {gap["split"]} | gap to the study's oracle closed | gap to the 60k-image colour-blind classifier closed |
|---|---|---|---|
{rows}"""


def sigma_page(args, preset: str) -> str:
    cfg = dataclasses.replace(
        PRESETS[preset], device=args.device, extra_train_flags=("--no-progress",)
    )
    started = time.perf_counter()
    results = run_study(cfg, args.out, args.workers)
    wall_min = (time.perf_counter() - started) / 60
    names = {key: method.name for key, method in ARMS.items()}
    plot = args.results.parent / "img" / "accuracy-vs-sigma.png"
    sigma_plot(results, names, plot)
    compute_min = Timings(args.out / "timings.json").total / 60
    start = encode_start(cfg)
    sitting = (f"{wall_min:.0f} min in the last sitting" if wall_min >= 1
               else "this page written from its finished steps")  # fmt: skip
    return f"""# Results: the colour-bias sweep on Colored Fashion-MNIST

Produced by `python -m studies.reproduce --study sigma --device {args.device}` (preset
`{preset}`) on {machine()}: {compute_min:.0f} min of summed step times ({sitting}). Mean ± standard deviation over seeds {list(cfg.seeds)}; classifiers trained on
{cfg.train_images} biased-colour training images per sigma (one latent store per sigma,
{cfg.encode_steps} inversion steps from {start}, shipped generator), {cfg.epochs} epochs;
accuracy on the 10k test images with biased (`iid`), random and swapped colours. The
data-scaling study is in [RESULTS.md](RESULTS.md).

{markdown_table(results, names)}

{equal_compute_text(results, names)}

{gap_text(oracle_gap(results, reference=reference_accuracy(args.out)), names)}

![accuracy vs sigma](img/{plot.name})
"""


def scaling_page(args, preset: str) -> str:
    cfg = scaling.PRESETS[preset]
    base = dataclasses.replace(cfg.base, device=args.device, extra_train_flags=("--no-progress",))
    cfg = dataclasses.replace(cfg, base=base)
    started = time.perf_counter()
    if args.page_only:
        results, missing = scaling.finished_runs(cfg, args.out)
        largest = max(n for n, _ in cfg.sizes)
        needed = {(largest, m) for m in ("nominal", "advmix")}
        if not needed <= {(r["images"], r["method"]) for r in results}:
            raise SystemExit(f"Error: {args.out}/runs has no evaluated nominal and AdvMix runs at "
                             f"{largest} images: no page to write from it")  # fmt: skip
        device, where = recorded_machine(results)
    else:
        results, missing = scaling.run_scaling(cfg, args.out, args.workers), []
        device, where = args.device, machine()
    wall_min = (time.perf_counter() - started) / 60
    ceiling = {s: reference_accuracy(args.out, s, cfg.sigma) for s in ("random", "swapped")}
    names = {key: method.name for key, method in ARMS.items()}
    by_size, by_seconds = (args.results.parent / "img" / f"{args.results.stem.lower()}-{plot}.png"
                           for plot in ("accuracy-vs-images", "accuracy-vs-seconds"))  # fmt: skip
    size_plot(results, names, ceiling, by_size)
    curves = scaling.curves(results, cfg.eval_specs())
    largest = max(n for n, _ in cfg.sizes)
    compute_plot([c for c in curves if c["method"] in ("advmix", "randmix", "randmix-long")],
                 names, largest, by_seconds)  # fmt: skip
    compute_min = Timings(args.out / "timings.json").total / 60
    sizes = ", ".join(f"{n} images for {e} epoch{'s' * (e != 1)}" for n, e in cfg.sizes)
    start = encode_start(cfg.base)
    oracle_note = ("The colour-blind oracle gets the same images and epochs as the others. "
                   if "oracle" in cfg.base.methods else "")  # fmt: skip
    workers = json.loads((args.out / "scaling-config.json").read_text()).get("workers", 1)
    flag, at_once = (f" --workers {workers}", parallel_note(workers)) if workers > 1 else ("", "")
    return f"""# Results: Colored Fashion-MNIST, {" / ".join(str(n) for n, _ in cfg.sizes)} training images

Produced by `python -m studies.reproduce --device {device} --preset {preset}{flag}` (`make
reproduce` runs the `cpu` preset) on {where}: {compute_min:.0f} min of summed step times ({wall_min:.0f} min in
the last sitting).{at_once} Every number below is the mean ± standard deviation over seeds
{list(cfg.base.seeds)}, and comes from a run directory under `--out`
(`{args.out}/runs/n<images>/<method>-seed<seed>/`: `run.json` holds the run's command and
settings, `eval.json` its accuracies, `metrics.jsonl` its scores during training). The sweep
over colour-bias strengths and every baseline (AT, mixup) is in
[results-sigma.md](results-sigma.md); {other_pages(args.results)}.

{unfinished(missing, names)}**Setup.** Colour correlation sigma {cfg.sigma:g} (the strongest of the sweep). One latent store
per size: the first N biased-colour training images, {cfg.base.encode_steps} inversion steps from
{start}. Training settings scale with the data, so that larger stores get more steps but fewer
epochs: {sizes}, batch 64, {learning_rate(results)}, AdvMix K = 5 (ball projection). {oracle_note}The fixed ceiling is the shipped colour-blind
classifier trained on all 60k grey training images (`{REFERENCE.name}`:
{ceiling["random"]:.3f} on `random`, {ceiling["swapped"]:.3f} on `swapped`). Accuracy on the 10k
test images with biased (`iid`), random and swapped colours.

## Accuracy by store size

{size_table(results, names)}

![accuracy vs training images](img/{by_size.name})

## Gap to the 60k-image colour-blind classifier

{gap_table(scaling_gap := ceiling_gap(results, ceiling["random"]), names)}

## Equal compute ({largest} images)

{equal_compute_table(results, names, largest)}

Accuracy on {cfg.eval_limit} test images per split, scored every {cfg.eval_every} steps, against
the seconds spent in training steps (scoring not included), mean over seeds:

![accuracy vs training seconds](img/{by_seconds.name})

## Verdict

A lead within the seeds' spread (the larger standard deviation of the two) is called level.

{verdict(results, scaling_gap, largest, names)}

## Diagnostics

{diagnostics_table(results, args.out, cfg.sigma)}
{levers_section(args.out)}"""


def parallel_note(workers: int) -> str:
    return (f" Its training runs went {workers} at a time, each in its own process with an equal "
            "share of the cores: their seconds compare with each other, not with a page whose runs "
            "trained one at a time.")  # fmt: skip


def levers_section(out: Path) -> str:
    """The levers study's table (``python -m studies.levers``), when it has run on ``out``."""
    path = out / "levers.json"
    if not path.exists():
        return ""
    return f"""
## Levers

`python -m studies.levers --out {out}` trains AdvMix once more at {levers.IMAGES} images
({levers.EPOCHS} epochs, the same seeds) with one lever changed, and attacks each finished
classifier with its own training budget (mean ± standard deviation over seeds; the first row is
this study's own AdvMix runs with the defaults; "training s" is the mean seconds in training
steps):

{levers.table(rows := json.loads(path.read_text()))}

Label noise: the share of worst-case mixes that fool the trained classifier and no longer show
their class to the colour-blind judge (the two columns before it, per seed). Against the study's
own AdvMix (a difference within the seeds' spread is called level):

{levers.verdict(rows)}
"""


def gap_table(gap: dict, names: dict[str, str]) -> str:
    """Share of the nominal -> ceiling gap on `random` closed, per size and method."""
    methods = list(dict.fromkeys(m for per in gap.values() for m in per if m != "nominal"))
    head = "| images | " + " | ".join(names[m] for m in methods) + " |"
    lines = [head, "|---" * (len(methods) + 1) + "|"]
    for images, per in gap.items():
        cells = " | ".join("{:.0%} ± {:.0%}".format(*per[m]) if m in per else "" for m in methods)
        lines.append(f"| {images} | {cells} |")
    return (
        "Share of the gap between each seed's nominal classifier and the ceiling on `random` that "
        "the same seed's run closes:\n\n" + "\n".join(lines)
    )


def equal_compute_table(results: list[dict], names: dict[str, str], images: int) -> str:
    lines = [
        "| method | seeds | epochs | training s | random | swapped |",
        "|---|---|---|---|---|---|",
    ]
    for method in ("advmix", "randmix", "randmix-long"):
        rows = [r for r in results if r["images"] == images and r["method"] == method]
        if not rows:
            continue
        epochs = sorted({r["epochs"] for r in rows})
        cells = " | ".join("{:.3f} ± {:.3f}".format(*mean_std([r[s] for r in rows]))
                           for s in ("random", "swapped"))  # fmt: skip
        lines.append(f"| {names[method]} | {len(rows)} | {'/'.join(map(str, epochs))} | "
                     f"{np.mean([r['train_s'] for r in rows]):.0f} | {cells} |")  # fmt: skip
    return (
        "RandMix given the training seconds AdvMix took (per seed, the fewest whole epochs whose "
        "seconds, predicted from its run at the same epochs as AdvMix, reach AdvMix's):\n\n"
        + "\n".join(lines)
        + equal_compute_notes(results, images, equal_compute_rule(results, images))
    )


def learning_rate(results: list[dict]) -> str:
    """How the runs' learning rate moved, from their ``run.json`` (runs from before the
    schedule was an option trained at a constant rate)."""
    schedules = {json.loads((Path(r["run"]) / "run.json").read_text())["config"]
                 .get("lr_schedule", "constant") for r in results}  # fmt: skip
    if schedules == {"cosine"}:
        return "Adam 1e-3 decaying to 0 over each run (`--lr-schedule cosine`)"
    return f"Adam 1e-3 ({', '.join(sorted(schedules))} learning rate)"


def equal_compute_rule(results: list[dict], images: int) -> dict[int, int]:
    """{seed: epochs} the equal-compute rule gives RandMix at ``images`` from the runs' logs."""
    runs = {(r["method"], r["seed"]): r for r in results if r["images"] == images}
    return {
        seed: equal_compute_epochs(Path(runs["advmix", seed]["run"]),
                                   Path(runs["randmix", seed]["run"]),
                                   runs["randmix", seed]["epochs"])
        for method, seed in runs if method == "randmix-long"
        and ("advmix", seed) in runs and ("randmix", seed) in runs
    }  # fmt: skip


def verdict(results: list[dict], gap: dict, largest: int, names: dict[str, str]) -> str:
    """What the study asks of AdvMix at the largest store, answered by the measured means."""

    def mean(method: str, split: str) -> tuple[float, float]:
        rows = [r for r in results if r["images"] == largest and r["method"] == method]
        return mean_std([r[split] for r in rows])

    closed, spread = gap[largest]["advmix"]
    lines = [f"- At {largest} images AdvMix closes {closed:.1%} ± {spread:.1%} of the gap to the "
             f"60k-image colour-blind classifier on `random`."]  # fmt: skip
    rival = "randmix-long" if any(r["method"] == "randmix-long" for r in results) else "randmix"
    seeds = sum(r["images"] == largest and r["method"] == rival for r in results)
    for split in ("random", "swapped"):
        (a, sa), (b, sb) = mean("advmix", split), mean(rival, split)
        lines.append(f"- `{split}`: AdvMix {a:.3f} ± {sa:.3f}, {names[rival]} {b:.3f} ± {sb:.3f} "
                     f"({seeds} seed{'s' * (seeds != 1)}): AdvMix is "
                     f"{standing(a - b, max(sa, sb))} ({a - b:+.3f}).")  # fmt: skip
    if rival != "randmix":
        leads = [f"`{split}` {standing(a - b, max(sa, sb))} ({a - b:+.3f})"
                 for split in ("random", "swapped")
                 for (a, sa), (b, sb) in [(mean("advmix", split), mean("randmix", split))]]  # fmt: skip
        lines.append("- Against RandMix at the same epochs as AdvMix: " + ", ".join(leads) + ".")
    (a, _), (b, _) = mean("advmix", "iid"), mean("nominal", "iid")
    lines.append(f"- `iid`: AdvMix {a:.3f} against nominal {b:.3f} ({(a - b) * 100:+.2f} points).")
    return "\n".join(lines)


def other_pages(page: Path) -> str:
    """Links to the scaling study's other pages that have been written."""
    presets: dict[str, list[str]] = {}
    for name, other in SCALING_PAGES.items():
        if other != page.name and (page.parent / other).exists():
            presets.setdefault(other, []).append(f"`{name}`")
    links = [
        f"[{other}]({other}) (preset {' or '.join(names)})" for other, names in presets.items()
    ]
    return (
        "the scaling study's other pages: " + ", ".join(links)
        if links
        else "no other preset of this study has a page yet"
    )


# Where each scaling preset's page goes by default (full and cpu share the main page).
SCALING_PAGES = {"cpu": "RESULTS.md", "full": "RESULTS.md", "all-data": "results-60k.md",
                 "cpu-16k": "results-16k.md", "cpu-16k-4ep": "results-16k-4ep.md"}  # fmt: skip
# --study NAME: (its presets, their default pages under docs/, the function that writes one)
STUDIES = {
    "scaling": (SCALING_PAGES, scaling_page),
    "sigma": ({"cpu": "results-sigma.md", "full": "results-sigma.md"}, sigma_page),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=("scaling", "sigma"), default="scaling")
    parser.add_argument("--out", type=Path, help="default: runs/<study>")
    parser.add_argument("--results", type=Path, help="default: the study's page under docs/")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", choices=tuple(scaling.PRESETS),
                        help="default: full on cuda, else cpu; all-data: the scaling study's 60k "
                        "images alone; cpu-16k: the cpu preset's 16k images alone; cpu-16k-4ep: those for "
                        "4 epochs")  # fmt: skip
    add_workers_option(parser)
    parser.add_argument("--page-only", action="store_true",
                        help="write the scaling page from the runs under --out that finished; "
                        "start nothing")  # fmt: skip
    args = parser.parse_args()
    pages, write = STUDIES[args.study]
    checked_workers(parser, args.workers)
    if args.page_only and args.study != "scaling":
        parser.error("--page-only is for --study scaling")
    preset = args.preset or ("full" if args.device == "cuda" else "cpu")
    if preset not in pages:
        parser.error(f"--study {args.study} has no preset {preset} (it has {', '.join(pages)})")
    args.out = args.out or Path("runs") / (args.study if preset in ("cpu", "full") else preset)
    args.results = args.results or Path("docs") / pages[preset]
    started = time.perf_counter()
    text = write(args, preset)
    args.results.write_text(text)
    say(f"wrote {args.results} ({(time.perf_counter() - started) / 60:.0f} min)")


if __name__ == "__main__":
    main()

"""Tables and plots of study results (``studies.study``): markdown, bar chart, accuracy vs sigma."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from studies import scaling

SPLITS = ("iid", "random", "swapped")


def aggregate(results: list[dict]) -> dict[tuple[float, str], dict[str, tuple[float, float]]]:
    """{(sigma, method): {split: (mean, std over seeds)}} in first-seen order."""
    grouped: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for row in results:
        grouped[(row["sigma"], row["method"])].append(row)
    return {
        key: {s: (float(np.mean([r[s] for r in rows])), float(np.std([r[s] for r in rows])))
              for s in SPLITS}
        for key, rows in grouped.items()
    }  # fmt: skip


def markdown_table(results: list[dict], names: dict[str, str]) -> str:
    """Mean ± std over seeds per (sigma, method); with the runs' epochs and mean training
    seconds when the rows carry them (equal compute is read off the table)."""
    stats = aggregate(results)
    seeds = len({r["seed"] for r in results})
    cell = (lambda m, s: f"{m:.3f} ± {s:.3f}") if seeds > 1 else (lambda m, s: f"{m:.3f}")
    timed = all("train_s" in r for r in results)
    head = "| sigma | method | " + ("seeds | epochs | training s | " if timed else "")
    lines = [head + "iid | random | swapped |", "|---" * (head.count("|") + 2) + "|"]
    for (sigma, method), split_stats in stats.items():
        cells = " | ".join(cell(*split_stats[s]) for s in SPLITS)
        if timed:
            rows = [r for r in results if r["sigma"] == sigma and r["method"] == method]
            epochs = "/".join(map(str, sorted({r["epochs"] for r in rows})))
            seconds = np.mean([r["train_s"] for r in rows])
            cells = f"{len(rows)} | {epochs} | {seconds:.0f} | {cells}"
        lines.append(f"| {sigma:g} | {names.get(method, method)} | {cells} |")
    return "\n".join(lines)


def equal_compute_pairs(results: list[dict]) -> list[tuple]:
    """(sigma, split, AdvMix (mean, std), RandMix-at-its-seconds (mean, std), standing) for
    every sigma that has both arms; a lead within the larger std is called level."""
    stats = aggregate(results)
    pairs = []
    for sigma in dict.fromkeys(sigma for sigma, _ in stats):
        if (sigma, "advmix") not in stats or (sigma, "randmix-long") not in stats:
            continue
        for split in SPLITS:
            (a, sa), (b, sb) = stats[sigma, "advmix"][split], stats[sigma, "randmix-long"][split]
            pairs.append((sigma, split, (a, sa), (b, sb), standing(a - b, max(sa, sb))))
    return pairs


def equal_compute_verdict(results: list[dict], names: dict[str, str]) -> str:
    """One line per sigma and split of ``equal_compute_pairs``; a lone sigma is not named."""
    pairs = equal_compute_pairs(results)
    several = len({sigma for sigma, *_ in pairs}) > 1
    return "\n".join(
        f"- {f'sigma {sigma:g}, ' if several else ''}`{split}`: AdvMix {a:.3f} ± {sa:.3f}, "
        f"{names['randmix-long']} {b:.3f} ± {sb:.3f}: AdvMix is {where} ({a - b:+.3f})."
        for sigma, split, (a, sa), (b, sb), where in pairs
    )


def equal_compute_text(results: list[dict], names: dict[str, str]) -> str:
    pairs = equal_compute_pairs(results)
    if not pairs:
        return ""
    counts = {word: sum(where.startswith(word) for *_, where in pairs)
              for word in ("ahead", "level", "behind")}  # fmt: skip
    return f"""## AdvMix against RandMix at equal compute

"{names["randmix-long"]}" trains RandMix until it has spent at least each seed's AdvMix
training seconds, in whole epochs (the table's *epochs* and *training s*). A lead within the
larger of the two standard deviations is called level. Over the {len(pairs)} pairs of
sigma and test colours AdvMix is ahead on {counts["ahead"]}, level on {counts["level"]} and
behind on {counts["behind"]}:

{equal_compute_verdict(results, names)}"""


def bar_plot(results: list[dict], names: dict[str, str], path: Path) -> None:
    plt = _pyplot()
    stats = aggregate(results)
    methods = [method for (_, method) in stats]
    x = np.arange(len(SPLITS))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for i, ((_, method), split_stats) in enumerate(stats.items()):
        means = [split_stats[s][0] for s in SPLITS]
        errs = [split_stats[s][1] for s in SPLITS]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errs,
               label=names.get(method, method))  # fmt: skip
    ax.set_xticks(x, [f"test: {s}" for s in SPLITS])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Colored Fashion-MNIST: classifiers trained on biased colours")
    _save(fig, path)


def sigma_plot(results: list[dict], names: dict[str, str], path: Path, split: str = "random"):
    plt = _pyplot()
    stats = aggregate(results)
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=120)
    for method in dict.fromkeys(m for (_, m) in stats):
        points = sorted((sigma, st[split]) for (sigma, m), st in stats.items() if m == method)
        sigmas = [p[0] for p in points]
        ax.errorbar(sigmas, [p[1][0] for p in points], yerr=[p[1][1] for p in points],
                    marker="o", capsize=3, label=names.get(method, method))  # fmt: skip
    ax.set_xlabel("sigma of the training colour noise (smaller = stronger spurious correlation)")
    ax.set_ylabel(f"accuracy on '{split}' colours")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # off the lines
    _save(fig, path)


def oracle_gap(results: list[dict], split: str = "random", reference: float | None = None) -> dict:
    """The study's headline figure, at the strongest correlation (smallest sigma): the share of the
    nominal -> oracle gap on ``split`` that each method closes, from mean accuracies; with
    ``reference`` (another ceiling's accuracy) also the share of the nominal -> reference gap."""
    stats = aggregate(results)
    sigma = min(s for (s, _) in stats)
    mean = {m: st[split][0] for (s, m), st in stats.items() if s == sigma}
    if "nominal" not in mean or "oracle" not in mean:
        raise ValueError("the oracle gap needs nominal and oracle runs")

    def closed(ceiling: float) -> dict[str, float]:
        gap = ceiling - mean["nominal"]
        return {m: (acc - mean["nominal"]) / gap for m, acc in mean.items() if gap > 0}

    out = {"sigma": sigma, "split": split, "accuracy": mean, "gap_closed": closed(mean["oracle"])}
    if reference is not None:
        out |= {"reference": reference, "reference_gap_closed": closed(reference)}
    return out


# -- the data-scaling study (studies.scaling) --------------------------------------------------


def by_size(results: list[dict]) -> dict[tuple[int, str], list[dict]]:
    """{(images, method): rows over seeds} in first-seen order."""
    grouped: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for row in results:
        grouped[(row["images"], row["method"])].append(row)
    return dict(grouped)


def mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def size_table(results: list[dict], names: dict[str, str]) -> str:
    lines = ["| images | method | seeds | epochs | training s | iid | random | swapped |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (images, method), rows in by_size(results).items():
        cells = " | ".join("{:.3f} ± {:.3f}".format(*mean_std([r[s] for r in rows]))
                           for s in SPLITS)  # fmt: skip
        seconds = np.mean([r["train_s"] for r in rows])
        epochs = "/".join(map(str, sorted({r["epochs"] for r in rows})))
        lines.append(f"| {images} | {names.get(method, method)} | {len(rows)} | {epochs} | "
                     f"{seconds:.0f} | {cells} |")  # fmt: skip
    return "\n".join(lines)


def ceiling_gap(results: list[dict], ceiling: float, split: str = "random") -> dict:
    """{images: {method: (mean, std)}} of the share of the gap between each seed's nominal
    classifier and ``ceiling`` on ``split`` that a method's run of the same seed closes."""
    groups = by_size(results)
    out: dict[int, dict[str, tuple[float, float]]] = {}
    for (images, method), rows in groups.items():
        nominal = {r["seed"]: r[split] for r in groups.get((images, "nominal"), [])}
        shares = [(r[split] - nominal[r["seed"]]) / (ceiling - nominal[r["seed"]])
                  for r in rows if r["seed"] in nominal]  # fmt: skip
        if shares:
            out.setdefault(images, {})[method] = mean_std(shares)
    return out


def size_plot(results: list[dict], names: dict, ceiling: dict[str, float], path: Path) -> None:
    """Accuracy on ``random`` and ``swapped`` against the number of training images."""
    plt = _pyplot()
    groups = by_size(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120, sharey=True)
    for ax, split in zip(axes, ("random", "swapped"), strict=True):
        for method in dict.fromkeys(m for (_, m) in groups):
            points = sorted((n, mean_std([r[split] for r in rows]))
                            for (n, m), rows in groups.items() if m == method)  # fmt: skip
            ax.errorbar([p[0] for p in points], [p[1][0] for p in points],
                        yerr=[p[1][1] for p in points], marker="o", capsize=3,
                        label=names.get(method, method))  # fmt: skip
        ax.axhline(ceiling[split], color="k", ls="--", lw=1, label="colour-blind, 60k images")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training images")
        ax.set_title(f"test colours: {split}")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def compute_plot(runs: list[dict], names: dict, images: int, path: Path) -> None:
    """Accuracy on ``random`` and ``swapped`` against cumulative training seconds, one curve
    per method at ``images`` (mean over seeds at each scoring step)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120, sharey=True)
    methods = dict.fromkeys(r["method"] for r in runs if r["images"] == images)
    for ax, split in zip(axes, ("random", "swapped"), strict=True):
        for method in methods:
            seeds = [r["points"] for r in runs if r["images"] == images and r["method"] == method]
            n = min(len(points) for points in seeds)
            x = [np.mean([points[i]["train_s"] for points in seeds]) for i in range(n)]
            y = [np.mean([points[i][split] for points in seeds]) for i in range(n)]
            ax.plot(x, y, marker=".", label=names.get(method, method))
        ax.set_xlabel("training seconds")
        ax.set_title(f"{images} images, test colours: {split}")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def unfinished(missing: list[tuple[int, str, int]], names: dict[str, str]) -> str:
    """What a page written from a study stopped early (``--page-only``) lacks."""
    if not missing:
        return ""
    runs = ", ".join(f"{names[m]} seed {s} at {n} images" for n, m, s in missing)
    return (
        f"**Not finished.** The study stopped before these runs: {runs}. This page was written "
        "from the finished runs alone (`--page-only`); the `seeds` columns say how many runs each "
        "row averages.\n\n"
    )


def equal_compute_notes(results: list[dict], images: int, rule: dict[int, int]) -> str:
    """Where the longer RandMix runs fall short of the rule: a seed given fewer epochs than
    ``rule`` ({seed: epochs}) gives it now, and seeds whose run took fewer seconds than AdvMix's
    (runs the study extended past the rule's epochs are not short)."""
    advmix = {r["seed"]: r["train_s"] for r in results
              if r["images"] == images and r["method"] == "advmix"}  # fmt: skip
    notes = []
    for r in results:
        if r["images"] != images or r["method"] != "randmix-long":
            continue
        if r["seed"] in rule and r["epochs"] < rule[r["seed"]]:
            notes.append(f"seed {r['seed']} ran {r['epochs']} epochs where the rule gives "
                         f"{rule[r['seed']]}")  # fmt: skip
        if r["seed"] in advmix and r["train_s"] < advmix[r["seed"]]:
            notes.append(f"seed {r['seed']} trained {r['train_s']:.0f} s against AdvMix's "
                         f"{advmix[r['seed']]:.0f} s")  # fmt: skip
    return "\n\nNot quite equal: " + "; ".join(notes) + "." if notes else ""


def standing(lead: float, spread: float) -> str:
    """A lead no larger than the seeds' spread is not called a win (nor a tie a loss)."""
    if abs(lead) <= spread:
        return "level with it"
    return "ahead" if lead > 0 else "behind"


def label_noise(mix_report: dict) -> float:
    """Share of worst-case mixes that fool the trained classifier and no longer show their
    class to the colour-blind judge: examples whose label their image does not carry."""
    kept = mix_report["class_kept_advmix_mix_that_fools"] or 0.0
    return mix_report["advmix_fooled"] * (1.0 - kept)


def diagnostics_table(results: list[dict], out: Path, sigma: float) -> str:
    """Why mixes can fail: latents that lose the class, mixes that lose it, an attack that
    still fools the classifier at the end of training."""
    lines = ["| images | reconstructions keep the class | random mixes keep the class | "
             "AdvMix examples a mix fooled (last epoch) | trained classifier fooled by a "
             "worst-case mix | worst-case mixes that fool it and keep the class |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for images in dict.fromkeys(r["images"] for r in results):
        report = json.loads((out / "stores" / f"sigma-{sigma:g}-n{images}-report.json").read_text())
        runs = [
            Path(r["run"]) for r in results if r["images"] == images and r["method"] == "advmix"
        ]
        fooled = [scaling.fooled_rate(run) for run in runs]
        mixes = [json.loads((run / "mix-report.json").read_text()) for run in runs
                 if (run / "mix-report.json").exists()]  # fmt: skip
        after = [m["advmix_fooled"] for m in mixes]
        kept = [m["class_kept_advmix_mix_that_fools"] for m in mixes
                if m["class_kept_advmix_mix_that_fools"] is not None]  # fmt: skip
        lines.append(f"| {images} | {report['class_kept_reconstruction']:.1%} | "
                     f"{report['class_kept_random_mix']:.1%} | "
                     "{:.1%} ± {:.1%} | ".format(*mean_std(fooled))
                     + "{:.1%} ± {:.1%} | ".format(*mean_std(after))
                     + ("{:.1%} ± {:.1%} |".format(*mean_std(kept)) if kept else "none fools |"))  # fmt: skip
    return (
        "Class kept: judged by the 60k-image colour-blind classifier on the store's first 512 "
        "samples (`advmix store report`); every store begins with the same images and latents "
        "(the first N training images, encoded alike), so these two columns repeat from size "
        "to size. The last two columns attack each finished AdvMix "
        "classifier on those samples with the training budget (`advmix store report --against "
        "RUN/classifier.pt`, saved as the run's `mix-report.json`): a worst-case mix that fools "
        "the classifier but no longer shows its class to the colour-blind judge is label noise, "
        "not a lesson about colour.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + shortfall(
            report,
            mixes,
            "are tried in the next section"
            if (out / "levers.json").exists()
            else "are in [results-16k.md](results-16k.md), on the 16384-image store at 2 "
            "epochs, where they chose the defaults (`python -m studies.levers` measures them on "
            "a study's own folder)",
        )
    )


def shortfall(report: dict, mixes: list[dict], tried: str) -> str:
    """What the last row says about AdvMix's limit, in words (the largest store's numbers)."""
    fooled = np.mean([m["advmix_fooled"] for m in mixes])
    kept = np.mean([m["class_kept_advmix_mix_that_fools"] or 0.0 for m in mixes])
    noise = np.mean([label_noise(m) for m in mixes])
    return (
        f"At the largest store a finished AdvMix classifier is still fooled by {fooled:.0%} of "
        f"the worst-case mixes of its own training images, and only {kept:.0%} of those mixes "
        "still show their class to the colour-blind judge (which gives the class to "
        f"{report['classifier_accuracy_on_originals']:.0%} of the originals and "
        f"{report['class_kept_reconstruction']:.0%} of the store's reconstructions): about "
        f"{noise:.0%} of the examples AdvMix trains on carry a label their image "
        "no longer shows. Levers on the method, each measured with seeds, "
        f"{tried}."
    )

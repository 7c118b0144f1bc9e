"""What would close AdvMix's gap to the ceiling? Levers on the method, each tried on its own.

    python -m studies.levers [--out runs/scaling] [--device cpu]

At the scaling study's smallest point (sigma 0.02, 1024 training images, 10 epochs, seeds 0-2),
AdvMix is trained again with one lever changed (``LEVERS``):

- the defaults train on each example's nominal image, its worst-case mix and its random start
  (a RandMix sample the attack decodes anyway: ``--train-on both+random``);
- Algorithm 2 as the paper gives it: the nominal image and the worst-case mix (``--train-on
  both``);
- the worst-case and random mixes without the nominal image, whose colour is the shortcut
  (``--train-on mixes+random``);
- a store encoded further at about the same cost: 20 steps from the encoder, the mixing loss
  on the last 5 (``--mix-steps 5``), where the study's store has 10 steps with it on each.

``--levers SLUG,...`` runs only those levers beside the study's own AdvMix.

The unchanged AdvMix and the nominal runs are the scaling study's own (reused from ``--out``,
trained when missing). Every AdvMix classifier is attacked once more with its own training budget
(``advmix store report --against``, ``mix-report.json``), so each lever's label noise is
measured, not assumed. Writes ``OUT/levers.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studies import scaling
from studies.report import label_noise, mean_std, standing
from studies.study import Timings, encode, reference_accuracy, say


@dataclass(frozen=True)
class Lever:
    name: str  # label in the table
    slug: str  # folder of its runs under OUT/levers/ ("" : the scaling study's own runs)
    encode_steps: int = 10
    encode_flags: tuple[str, ...] = ()  # other encode-job options for its store
    attack_flags: tuple[str, ...] = ()  # AdvMix options, for training and the mix report alike
    train_flags: tuple[str, ...] = ()  # other training options


# The first row is the scaling study's own AdvMix (today's defaults); the others change one thing
# (Algorithm 2's own examples are the nominal image and the worst-case mix: --train-on both).
LEVERS = (
    Lever("AdvMix (defaults: nominal, worst-case and random mix)", ""),
    Lever(
        "Algorithm 2: nominal and worst-case mix", "algorithm-2", train_flags=("--train-on", "both")
    ),  # fmt: skip
    Lever(
        "mixes alone: worst-case and random mix",
        "mixes-random",
        train_flags=("--train-on", "mixes+random"),
    ),  # fmt: skip
    Lever(
        "store: 20 encoder steps, mixing loss on the last 5",
        "store-20-mix5",
        encode_steps=20,
        encode_flags=("--mix-steps", "5"),
    ),  # fmt: skip
)
IMAGES, EPOCHS = 1024, 10  # the scaling study's smallest point: every lever costs minutes there
SWING_SCORES = 6  # the last scores of a run whose changes measure its swing


def run_levers(cfg: scaling.ScalingConfig, out: Path, images: int = IMAGES,
               epochs: int = EPOCHS, levers: tuple[Lever, ...] = LEVERS) -> list[dict]:  # fmt: skip
    """One row per lever: accuracies, share of the gap closed, and the mix report, each as
    (mean, std) over seeds. The first lever is the one the others are read against."""
    size = cfg.at_size(images, epochs)
    study_timings = Timings(out / "timings.json")  # the study's own runs, trained when missing
    ceiling = reference_accuracy(out, "random", cfg.sigma)
    study_store = encode(size, cfg.sigma, out / "stores" / f"sigma-{cfg.sigma:g}-n{images}")
    runs = out / "runs" / f"n{images}"
    nominal = {seed: scaling.one_run(size, "nominal", study_store, seed, runs, study_timings)
               for seed in cfg.base.seeds}  # fmt: skip
    rows = []
    for lever in levers:
        lever_cfg = dataclasses.replace(
            size, encode_steps=lever.encode_steps, extra_encode_flags=lever.encode_flags,
            extra_train_flags=(*size.extra_train_flags, *lever.attack_flags, *lever.train_flags),
        )  # fmt: skip
        store = study_store
        if lever.encode_steps != size.encode_steps or lever.encode_flags:  # a store of its own
            store = encode(lever_cfg, cfg.sigma,
                           study_store.with_name(f"{study_store.name}-{lever.slug}"))  # fmt: skip
        lever_runs, timings = runs, study_timings
        if lever.slug:  # its seconds kept apart: the study's page sums its own
            lever_runs = out / "levers" / lever.slug
            timings = Timings(lever_runs / "timings.json")
        runs_of_lever = [
            scaling.one_run(lever_cfg, "advmix", store, seed, lever_runs, timings)
            for seed in cfg.base.seeds
        ]
        mixes = [scaling.mix_report(store, lever_cfg, Path(r["run"]), lever.attack_flags)
                 for r in runs_of_lever]  # fmt: skip
        closed = [(r["random"] - nominal[r["seed"]]["random"])
                  / (ceiling - nominal[r["seed"]]["random"]) for r in runs_of_lever]  # fmt: skip
        rows.append({
            "lever": lever.name, "store": str(store),
            "train_s": mean_std([r["train_s"] for r in runs_of_lever]),
            **{split: mean_std([r[split] for r in runs_of_lever])
               for split in ("iid", "random", "swapped")},
            "gap_closed": mean_std(closed),
            "fooled": mean_std([m["advmix_fooled"] for m in mixes]),
            "kept": mean_std([m["class_kept_advmix_mix_that_fools"] or 0.0 for m in mixes]),
            "label_noise": mean_std([label_noise(m) for m in mixes]),
            "swing": mean_std([swing(Path(r["run"]), cfg.eval_specs()["random"])
                               for r in runs_of_lever]),
        })  # fmt: skip
    (out / "levers.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def swing(run_dir: Path, spec: str, last: int = SWING_SCORES) -> float:
    """How much a run's score on ``spec`` moves between consecutive scores late in training
    (mean absolute change over its last ``last`` scores): a classifier chasing its adversary
    swings; one that has settled does not."""
    scores = [r["accuracy"][spec] for r in scaling.metric_records(run_dir, "eval")][-last:]
    return float(np.mean(np.abs(np.diff(scores)))) if len(scores) > 1 else float("nan")


def table(rows: list[dict]) -> str:
    lines = ["| AdvMix | training s | iid | random | swapped | gap closed | trained classifier "
             "fooled by a worst-case mix | of those, keep the class | label noise | `random` "
             "score's swing |",
             "|---" * 10 + "|"]  # fmt: skip
    for row in rows:
        cells = ["{:.0f}".format(row["train_s"][0]) if "train_s" in row else ""]
        cells += [f"{row[s][0]:.3f} ± {row[s][1]:.3f}" for s in ("iid", "random", "swapped")]
        cells += ["{:.1%} ± {:.1%}".format(*row[k])
                  for k in ("gap_closed", "fooled", "kept", "label_noise")]  # fmt: skip
        cells.append("{:.3f} ± {:.3f}".format(*row["swing"]) if "swing" in row else "")
        lines.append(f"| {row['lever']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """Each lever against the study's own AdvMix: does it close more of the gap, and does it
    cut the label noise?"""
    study, lines, quieter = rows[0], [], []
    for row in rows[1:]:
        (a, sa), (b, sb) = row["gap_closed"], study["gap_closed"]
        (n, sn), (m, sm) = row["label_noise"], study["label_noise"]
        lines.append(f"- {row['lever']}: {(a - b) * 100:+.1f} points of the gap, "
                     f"{standing(a - b, max(sa, sb))}; label noise {n:.0%} against {m:.0%}.")  # fmt: skip
        if m - n > max(sn, sm) and abs(a - b) < max(sa, sb):
            quieter.append(row["lever"])
    if quieter:
        names = " and ".join(quieter)
        lines.append(f"\n{names[0].upper()}{names[1:]} cut the label noise by more than the seeds' "
                     "spread without closing more of the gap: on this evidence the label noise "
                     "is not what holds AdvMix back at this size.")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"),
                        help="the scaling study's folder (its 1024-image runs are reused)")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    slugs = [lever.slug for lever in LEVERS[1:]]
    parser.add_argument("--levers", default=",".join(slugs),
                        help=f"comma-separated subset of {', '.join(slugs)}")  # fmt: skip
    args = parser.parse_args()
    chosen = args.levers.split(",")
    if unknown := sorted(set(chosen) - set(slugs)):
        parser.error(f"unknown lever(s): {', '.join(unknown)} (known: {', '.join(slugs)})")
    levers = (LEVERS[0], *(lever for lever in LEVERS[1:] if lever.slug in chosen))
    cfg = scaling.CPU
    base = dataclasses.replace(cfg.base, device=args.device, extra_train_flags=("--no-progress",))
    text = table(run_levers(dataclasses.replace(cfg, base=base), args.out, levers=levers))
    say("levers at 1024 images, sigma 0.02, 10 epochs, seeds 0-2:\n" + text)


if __name__ == "__main__":
    main()

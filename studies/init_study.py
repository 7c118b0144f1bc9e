"""Does a store encoded from the encoder's start train AdvMix as well as the paper's mean start?

    python -m studies.init_study --encoder advmix/assets/cfmnist-E.pt --encoder-steps 10,40
    python -m studies.init_study --encoder advmix/assets/cfmnist-E.pt --encoder-steps 20 \
        --encoder-mix-steps 5      # the mixing loss on the last 5 of the 20 steps only

Two stores of the same 1024 biased-colour training images (sigma 0.05): Algorithm 1 from the
mean style for 100 steps, and from the encoder's prediction for each of ``--encoder-steps``.
AdvMix trains from each with 3 seeds (10 epochs, the demo's settings) and is tested on the
``iid``, ``random`` and ``swapped`` colours. Prints (and writes ``OUT/summary.json``) the mean
and spread per store and split, and each store's encode time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from studies.study import DEMO, SPLITS, StudyConfig, Timings, run_study, say


def plan_arms(encoder: str, encoder_steps: list[int], mix_steps: int | None,
              mean_steps: int) -> dict[str, StudyConfig]:  # fmt: skip
    """One study per store: the demo's images and training, AdvMix alone, seeds 0-2."""
    # the demo's settings, but the paper's start: the demo itself starts from the encoder
    arms = {f"mean-{mean_steps}": dataclasses.replace(DEMO, encode_steps=mean_steps, encoder=None,
                                                      extra_encode_flags=())}  # fmt: skip
    mixing = () if mix_steps is None else ("--mix-steps", str(mix_steps))
    suffix = "" if mix_steps is None else f"-mix{mix_steps}"
    for steps in encoder_steps:
        arms[f"encoder-{steps}{suffix}"] = dataclasses.replace(
            DEMO, encode_steps=steps, encoder=encoder, extra_encode_flags=mixing
        )
    # AdvMix alone: no RandMix runs to give AdvMix's seconds to, as the demo does
    return {name: dataclasses.replace(cfg, methods=("advmix",), seeds=(0, 1, 2),
                                      equal_compute=False, extra_train_flags=("--no-progress",))
            for name, cfg in arms.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--encoder-steps", default="10", help="comma-separated step counts")
    parser.add_argument("--encoder-mix-steps", type=int, default=None,
                        help="the encoder stores' --mix-steps [default: every step]")  # fmt: skip
    parser.add_argument("--mean-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/init-study"))
    args = parser.parse_args()
    arms = plan_arms(args.encoder, [int(s) for s in args.encoder_steps.split(",")],
                     args.encoder_mix_steps, args.mean_steps)  # fmt: skip
    summary = {}
    for name, cfg in arms.items():
        out = args.out / name
        results = run_study(cfg, out)
        encode_s = Timings(out / "timings.json").seconds["encode sigma-0.05"]
        summary[name] = {
            "encode_s": encode_s,
            **{split: {"mean": round(float(np.mean([r[split] for r in results])), 4),
                       "std": round(float(np.std([r[split] for r in results])), 4),
                       "seeds": [round(r[split], 4) for r in results]}
               for split in SPLITS},
        }  # fmt: skip
        say(
            f"{name}: encode {encode_s:.0f}s; "
            + ", ".join(
                f"{s} {summary[name][s]['mean']:.3f} ± {summary[name][s]['std']:.3f}"
                for s in SPLITS
            )
        )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``make demo``: the end-to-end run a new user starts with.

Stages that are not built yet are named as such rather than faked; today the demo previews
the Colored Fashion-MNIST splits both stages consume.
"""

from __future__ import annotations

from pathlib import Path

from training.cli import main as advmix

OUT = Path("demo-out")
NOT_BUILT = ("encode (stage 1)", "train/evaluate (stage 2)")


def run() -> None:
    OUT.mkdir(exist_ok=True)
    for split in ("train", "random", "swapped"):
        spec = f"cfmnist:{split}?limit=100"
        print(f"[demo] previewing {spec}", flush=True)
        try:
            advmix(["data", "preview", "--dataset", spec, "--out", str(OUT / f"{split}.png")])
        except SystemExit as exc:
            if exc.code:
                raise
    print(f"[demo] not built yet: {', '.join(NOT_BUILT)}; grids are in {OUT}/")


if __name__ == "__main__":
    run()

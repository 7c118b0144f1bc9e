"""What docs/irm-benchmark.md concludes from the IRM study's results: each AdvMix row against
IRMv1 and 70%, against RandMix at equal compute, and what the nominal images do."""

from __future__ import annotations

import json
from pathlib import Path

from studies.irm import AT_ADVMIX_SECONDS
from studies.report import standing


def cell(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def irm_note(rows: dict) -> list[str]:
    irm = rows.get("IRMv1")
    if not irm or "follows_colour" not in irm:
        return []
    others = [f"{name} {100 * rows[name]['follows_colour']['train']:.1f}%"
              for name in ("ERM", "ERM-grayscale") if "follows_colour" in rows.get(name, {})]  # fmt: skip
    return ["*Predicts the colour*: the share of predictions equal to the image's colour (red 1, "
            "green 0; `colour.json` in each run's records). On the training images IRMv1's "
            f"predictions agree with the colour on {100 * irm['follows_colour']['train']:.1f}% "
            f"({', '.join(others)}). Every run is scored at its last step, as the reference "
            "code scores it: no early stopping, no model selection.", ""]  # fmt: skip


def judge(rows: dict, adv: str, rand: str) -> tuple[str, str]:
    """``adv`` against ``rand`` at test, judged as the colour study judges leads: the standing
    and the sentence that gives it."""
    a, b = rows[adv], rows[rand]
    lead, spread = a["test"] - b["test"], max(a["test_std"], b["test_std"])
    where = standing(lead, spread)
    return where, f"{adv} is {where} ({100 * lead:+.1f} points, std up to {100 * spread:.1f})"


def control(rows: dict) -> str:
    where, sentence = judge(rows, "AdvMix-mixes", "RandMix-mixes")
    adds = "accuracy" if where == "ahead" else "nothing the random mixes do not give"
    return f"{sentence}: here the worst case adds {adds}"


def equal_compute_bullets(rows: dict) -> list[str]:
    """Each AdvMix row against RandMix given its training seconds (studies.irm's pairs)."""
    pairs = [(adv, long) for long, (_, adv) in AT_ADVMIX_SECONDS.items()
             if long in rows and adv in rows]  # fmt: skip
    return [f"- {adv} {cell(rows[adv]['test'], rows[adv]['test_std'])}% against {long} "
            f"{cell(rows[long]['test'], rows[long]['test_std'])}% at test ({rows[long]['seeds']} "
            f"seeds): {judge(rows, adv, long)[1]}." for adv, long in pairs]  # fmt: skip


EQUAL_COMPUTE_RULE = ("`RandMix-long` and `RandMix-mixes-long` resume RandMix (on its mixes alone "
                      "for the second) with more epochs until it has spent the training seconds "
                      "of the same seed's `AdvMix` (`AdvMix-mixes`) run. A lead within the larger "
                      "standard deviation is called level.")  # fmt: skip


def equal_compute_lines(rows: dict) -> list[str]:
    bullets = equal_compute_bullets(rows)
    if not bullets:
        return []
    return ["## At equal compute", "", EQUAL_COMPUTE_RULE, "", *bullets, ""]


def nominal_lines(rows: dict, records: Path) -> list[str]:
    """What the rows trained without nominal images say about the real images' role."""
    if "AdvMix-mixes" not in rows or "AdvMix" not in rows:
        return []
    follow = lambda name: (f"{100 * rows[name]['follows_colour']['train']:.1f}%"  # noqa: E731
                           if "follows_colour" in rows.get(name, {}) else "?")  # fmt: skip
    test = lambda name: cell(rows[name]["test"], rows[name]["test_std"])  # noqa: E731
    path = records / "mixes.json"
    psnr = json.loads(path.read_text())["reconstruction_psnr_db"] if path.exists() else None
    lines = [
        "## What the nominal images do",
        "",
        f"With its default examples AdvMix scores {test('AdvMix')}% at test and its predictions "
        f"agree with the image's colour on {follow('AdvMix')} of training images; trained on "
        f"its mixes alone (`AdvMix-mixes`) it scores {test('AdvMix-mixes')}% and agrees with "
        f"the colour on {follow('AdvMix-mixes')}."
        + (f" RandMix on its mixes alone (`RandMix-mixes`, the control: no worst case) scores "
           f"{test('RandMix-mixes')}%: {control(rows)}." if "RandMix-mixes" in rows else ""),
        "",
        "Our reading: a classifier that trains on real images beside generated ones can keep "
        "the colour rule for the real ones, which it tells apart by their look"
        + (f" (the store's reconstructions average {psnr:.2f} dB PSNR)" if psnr else "")
        + "; the test images are real. Trained on mixes alone it never meets that rule, and "
        "the shapes it learns on generated items carry over to real ones. On `cfmnist`, whose "
        "test colours the mixes cover, the nominal images are worth keeping "
        "(`docs/training.md`); here they are not.",
        "",
    ]  # fmt: skip
    return lines


def why(rows: dict, records: Path) -> str:
    """Why AdvMix falls short, from the diagnostics, when it does."""
    adv, path = rows.get("AdvMix"), records / "mixes.json"
    if not adv or adv["test"] >= 0.70 or "follows_colour" not in adv or not path.exists():
        return ""
    m = json.loads(path.read_text())
    erm = rows.get("ERM", {}).get("follows_colour")
    return (f" The default AdvMix's predictions still follow the image's colour on "
            f"{100 * adv['follows_colour']['train']:.1f}% of training images"
            + (f" (ERM {100 * erm['train']:.1f}%)" if erm else "")
            + f". Its training mixes keep the class ({100 * m['class_kept']:.1f}%), "
            f"{100 * (m['mixes']['red'] + m['mixes']['green']):.1f}% of them are red or green "
            f"(originals {100 * (m['originals']['red'] + m['originals']['green']):.1f}%) and the "
            f"mix changes the colour's name on {100 * m['colour_changed']:.1f}% (section below).")  # fmt: skip


# What each AdvMix row trains on, for the verdict (rows named as in studies.irm.METHODS).
ADVMIX_ROWS = {"AdvMix": "`--train-on both+random`, the default: nominal images, worst-case "
               "and random mixes", "AdvMix-mixes": "`--train-on mixes+random`: worst-case and "
               "random mixes, no nominal images"}  # fmt: skip


def verdict(rows: dict) -> str:
    present = [name for name in ADVMIX_ROWS if name in rows]
    if not present:
        return ("AdvMix has no row yet, so whether it reaches IRMv1's test accuracy and 0.70 "
                "is not known: see *Not measured yet*.")  # fmt: skip
    irm = rows.get("IRMv1", {}).get("test")
    parts = []
    for name in present:
        adv, seeds = rows[name]["test"], rows[name]["seeds"]
        ok = adv >= 0.70 and (irm is None or adv >= irm)
        parts.append(f"{name} ({ADVMIX_ROWS[name]}) scores {100 * adv:.1f}% ± "
                     f"{100 * rows[name]['test_std']:.1f}% at test ({seeds} seed"
                     f"{'s' if seeds > 1 else ''})"
                     + (": at least IRMv1's accuracy and at least 70%" if ok else
                        ": short of IRMv1's accuracy or of 70%"))  # fmt: skip
    against = f" IRMv1 scores {100 * irm:.1f}%." if irm is not None else ""
    return "AdvMix uses no environment labels." + against + " " + "; ".join(parts) + "."

"""The data-scaling study end to end on tiny networks: one store per size, every arm, RandMix at
AdvMix's seconds, scores against training seconds, and the results page's tables."""

import json

import pytest

from studies.scaling import ScalingConfig, curves, run_scaling
from studies.study import StudyConfig, equal_compute_epochs
from tests.tiny_nets import tiny_generator

NAMES = {"nominal": "nominal", "randmix": "RandMix", "advmix": "AdvMix", "oracle": "oracle",
         "randmix-long": "RandMix, AdvMix's seconds"}  # fmt: skip


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    base = StudyConfig(
        seeds=(0,),
        methods=("nominal", "randmix", "advmix", "oracle"),
        encode_steps=2,
        encode_batch=16,
        batch_size=16,
        attack_steps=1,
        test_limit=40,
        generator=str(tiny_generator(out / "G.pt", k=4)),
        extra_train_flags=("--no-progress", "--log-every", "1"),
    )
    cfg = ScalingConfig(base=base, sizes=((32, 2), (48, 1)), equal_compute=(48,), eval_every=2,
                        eval_limit=40)  # fmt: skip
    return cfg, out / "run", run_scaling(cfg, out / "run", workers=2)


def test_every_size_has_its_store_and_every_arm(scaled):
    cfg, out, results = scaled
    assert sorted(p.name for p in (out / "stores").iterdir() if p.is_dir()) == [
        "sigma-0.02-n32", "sigma-0.02-n48"]  # fmt: skip
    assert [(r["images"], r["method"]) for r in results] == [
        (32, "nominal"), (32, "randmix"), (32, "advmix"), (32, "oracle"),
        (48, "nominal"), (48, "randmix"), (48, "advmix"), (48, "oracle"), (48, "randmix-long"),
    ]  # fmt: skip
    for row in results:
        record = json.loads((out / "runs" / f"n{row['images']}" /
                             f"{row['method']}-seed0" / "run.json").read_text())  # fmt: skip
        assert record["store"]["num_samples"] == row["images"]
        # RandMix at AdvMix's seconds may be extended (--resume) past its first sitting's epochs
        extended = row["method"] == "randmix-long"
        assert record["config"]["epochs"] == row["epochs"] or extended
        assert record["config"]["epochs"] <= row["epochs"]
        assert all(0.0 <= row[s] <= 1.0 for s in ("iid", "random", "swapped"))
    report = json.loads((out / "stores" / "sigma-0.02-n48-report.json").read_text())
    assert 0 <= report["class_kept_random_mix"] <= 1
    for images in (32, 48):  # every AdvMix run's classifier attacked once more, when finished
        mixes = json.loads((out / "runs" / f"n{images}" / "advmix-seed0" / "mix-report.json")
                           .read_text())  # fmt: skip
        assert mixes["advmix_samples"] == images and 0 <= mixes["advmix_fooled"] <= 1


def test_randmix_gets_the_seconds_advmix_took(scaled):
    cfg, out, results = scaled
    runs = out / "runs" / "n48"
    epochs = equal_compute_epochs(runs / "advmix-seed0", runs / "randmix-seed0", 1)
    long = next(r for r in results if r["method"] == "randmix-long")
    advmix = next(r for r in results if r["images"] == 48 and r["method"] == "advmix")
    # the predicted epochs at least, then more (--resume) until AdvMix's seconds are spent
    assert long["epochs"] >= epochs >= 2 and long["train_s"] >= advmix["train_s"]
    epoch_records = [r for r in map(json.loads, (runs / "randmix-long-seed0" / "metrics.jsonl")
                                    .read_text().splitlines()) if r.get("event") == "epoch"]  # fmt: skip
    assert [r["epoch"] for r in epoch_records] == list(range(long["epochs"]))


def test_equal_compute_epochs_follow_the_measured_seconds(tmp_path):
    for name, seconds in (("advmix", 90.0), ("randmix", 20.0)):
        (tmp_path / name).mkdir()
        records = [{"event": "epoch", "epoch": e, "train_s": seconds * (e + 1) / 2}
                   for e in range(2)]  # fmt: skip
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)))
    assert equal_compute_epochs(tmp_path / "advmix", tmp_path / "randmix", 2) == 9
    # 9.1 epochs' worth of seconds: RandMix gets 10, never fewer seconds than AdvMix had
    (tmp_path / "advmix" / "metrics.jsonl").write_text(
        json.dumps({"event": "epoch", "epoch": 1, "train_s": 91.0})
    )
    assert equal_compute_epochs(tmp_path / "advmix", tmp_path / "randmix", 2) == 10


def test_a_study_stopped_early_still_gets_its_page(scaled, tmp_path):
    """--page-only: the finished runs' rows, the planned runs that never finished named on the
    page, nothing trained."""
    import shutil

    from studies.report import unfinished
    from studies.reproduce import recorded_machine
    from studies.scaling import finished_runs

    cfg, out, results = scaled
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped, ignore=shutil.ignore_patterns("stores"))
    (stopped / "runs" / "n48" / "randmix-long-seed0" / "eval.json").unlink()
    rows, missing = finished_runs(cfg, stopped)
    assert missing == [(48, "randmix-long", 0)]
    assert [(r["method"], r["random"]) for r in rows] == [
        (r["method"], r["random"]) for r in results if r["method"] != "randmix-long"]  # fmt: skip
    assert "RandMix, AdvMix's seconds seed 0 at 48 images" in unfinished(missing, NAMES)
    assert unfinished([], NAMES) == ""
    device, words = recorded_machine(rows)
    assert device == "cpu" and "torch" in words


def test_the_settings_record_how_many_runs_trained_at_once(scaled):
    from studies.reproduce import parallel_note

    cfg, out, results = scaled
    assert json.loads((out / "scaling-config.json").read_text())["workers"] == 2
    assert "2 at a time" in parallel_note(2)


def test_a_page_without_the_runs_it_needs_is_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "studies.reproduce", "--preset", "all-data", "--page-only",
         "--out", str(tmp_path), "--results", str(tmp_path / "page.md")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {tmp_path}/runs has no evaluated nominal and AdvMix runs at 60000 images: no "
        "page to write from it"
    ]
    assert not (tmp_path / "page.md").exists()


def test_scores_against_seconds_come_from_the_runs_logs(scaled):
    cfg, out, results = scaled
    runs = curves(results, cfg.eval_specs())
    advmix = next(r for r in runs if r["method"] == "advmix" and r["images"] == 32)
    # 32 images in batches of 16: 2 steps an epoch, scored every 2 steps, 2 epochs
    assert len(advmix["points"]) == 2
    seconds = [p["train_s"] for p in advmix["points"]]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert all(0 <= p[s] <= 1 for p in advmix["points"] for s in ("random", "swapped"))


def test_rerun_trains_nothing(scaled, capsys):
    cfg, out, results = scaled
    assert run_scaling(cfg, out, workers=2) == results
    printed = capsys.readouterr().out
    assert "training" not in printed and "encoding" not in printed


def test_results_page_tables(scaled, tmp_path):
    from studies.report import ceiling_gap, compute_plot, diagnostics_table, size_plot, size_table
    from studies.reproduce import equal_compute_table, gap_table, verdict

    cfg, out, results = scaled
    assert "| 48 | RandMix, AdvMix's seconds |" in size_table(results, NAMES)
    gap = ceiling_gap(results, ceiling=1.0)
    assert gap[48]["nominal"] == (0.0, 0.0)
    assert "| 32 |" in gap_table(gap, NAMES)
    assert "| RandMix, AdvMix's seconds |" in equal_compute_table(results, NAMES, 48)
    text = verdict(results, gap, 48, NAMES)
    assert "of the gap to the 60k-image colour-blind classifier on `random`." in text
    assert "target" not in text and "RandMix, AdvMix's seconds 0." in text
    assert "Against RandMix at the same epochs as AdvMix: `random`" in text
    diagnostics = diagnostics_table(results, out, 0.02)
    assert "| 48 |" in diagnostics and "nan" not in diagnostics
    assert "keep the class |" in diagnostics.splitlines()[2]
    size_plot(results, NAMES, {"random": 0.9, "swapped": 0.9}, tmp_path / "size.png")
    compute_plot(curves(results, cfg.eval_specs()), NAMES, 48, tmp_path / "seconds.png")
    assert (tmp_path / "size.png").stat().st_size > 1000
    assert (tmp_path / "seconds.png").stat().st_size > 1000


def test_a_lead_within_the_spread_is_not_a_win():
    from studies.report import standing

    assert standing(0.007, 0.031).startswith("level")
    assert standing(0.145, 0.025) == "ahead" and standing(-0.1, 0.02) == "behind"


def test_equal_compute_verdict_is_given_per_sigma():
    from studies.report import equal_compute_verdict

    splits = {"iid": 0.9, "swapped": 0.5}
    rows = [{"sigma": sigma, "method": method, "seed": seed, **splits, "random": acc + seed / 100}
            for sigma, accs in ((0.02, {"advmix": 0.70, "randmix-long": 0.60}),
                                (0.1, {"advmix": 0.60, "randmix-long": 0.70}))
            for method, acc in accs.items() for seed in (0, 1)]  # fmt: skip
    lines = equal_compute_verdict(rows, NAMES).splitlines()
    assert len(lines) == 6  # two sigmas by three splits; a lone sigma is not named
    assert [line for line in lines if "random" in line] == [
        "- sigma 0.02, `random`: AdvMix 0.705 ± 0.005, RandMix, AdvMix's seconds 0.605 ± 0.005: "
        "AdvMix is ahead (+0.100).",
        "- sigma 0.1, `random`: AdvMix 0.605 ± 0.005, RandMix, AdvMix's seconds 0.705 ± 0.005: "
        "AdvMix is behind (-0.100).",
    ]  # fmt: skip
    assert "level with it (+0.000)" in lines[0]
    alone = equal_compute_verdict([r for r in rows if r["sigma"] == 0.1], NAMES)
    assert alone.startswith("- `iid`: AdvMix 0.900")
    from studies.report import equal_compute_text

    text = " ".join(equal_compute_text(rows, NAMES).split())
    assert "Over the 6 pairs of sigma and test colours AdvMix is ahead on 1, level on 4" in text


def test_gap_to_the_ceiling_is_per_seed():
    from studies.report import ceiling_gap

    rows = [{"images": 10, "method": m, "seed": seed, "random": acc + seed * 0.1}
            for m, acc in (("nominal", 0.2), ("advmix", 0.6)) for seed in (0, 1)]  # fmt: skip
    closed, spread = ceiling_gap(rows, ceiling=1.0)[10]["advmix"]
    assert closed == pytest.approx((0.4 / 0.8 + 0.4 / 0.7) / 2)
    assert spread > 0


def test_equal_compute_runs_that_miss_the_rule_are_named():
    from studies.report import equal_compute_notes

    rows = [{"images": 8, "method": "advmix", "seed": s, "train_s": 50.0} for s in (0, 1)]
    rows += [{"images": 8, "method": "randmix-long", "seed": 0, "epochs": 4, "train_s": 37.0},
             {"images": 8, "method": "randmix-long", "seed": 1, "epochs": 5, "train_s": 55.0}]  # fmt: skip
    notes = equal_compute_notes(rows, 8, rule={0: 5, 1: 5})
    assert "seed 0 ran 4 epochs where the rule gives 5" in notes
    assert "seed 0 trained 37 s against AdvMix's 50 s" in notes and "seed 1" not in notes
    assert equal_compute_notes(rows[:2] + rows[3:], 8, rule={1: 5}) == ""


def test_each_lever_trains_advmix_once_more_and_measures_its_label_noise(scaled, tmp_path):
    import shutil

    from studies.levers import LEVERS, run_levers

    cfg, out, results = scaled
    shutil.copytree(out, tmp_path / "run")
    study_run = tmp_path / "run" / "runs" / "n32" / "advmix-seed0"
    before = {
        name: (study_run / name).stat().st_mtime_ns for name in ("classifier.pt", "metrics.jsonl")
    }
    rows = run_levers(cfg, tmp_path / "run", images=32, epochs=2)
    # the study's own AdvMix runs were only re-read, not trained again
    assert {name: (study_run / name).stat().st_mtime_ns for name in before} == before
    lever_seconds = json.loads((tmp_path / "run" / "levers" / "mixes-random" / "timings.json")
                               .read_text())  # fmt: skip
    assert lever_seconds["advmix n32 seed-0"] > 0
    assert [r["lever"] for r in rows] == [lever.name for lever in LEVERS]
    study = next(r for r in results if r["images"] == 32 and r["method"] == "advmix")
    assert rows[0]["random"][0] == study["random"]  # the study's own run, reused
    config = {lever.slug: json.loads((tmp_path / "run" / "levers" / lever.slug / "advmix-seed0" /
                                      "run.json").read_text())["config"]
              for lever in LEVERS[1:]}  # fmt: skip
    assert config["algorithm-2"]["train_on"] == "both"
    assert config["mixes-random"]["train_on"] == "mixes+random"
    from schemas.reader import open_store

    further = next(r for r in rows if r["lever"].startswith("store:"))  # its own store
    recipe = open_store(further["store"]).encoder
    assert (recipe["steps"], recipe["mix_steps"]) == (20, 5)
    assert all(r["train_s"][0] > 0 for r in rows)
    assert all(0 <= r["swing"][0] <= 1 for r in rows)  # scores every 2 steps: several per run
    assert all(0 <= r["fooled"][0] <= 1 and 0 <= r["kept"][0] <= 1 for r in rows)
    from studies.report import diagnostics_table
    from studies.reproduce import levers_section

    section = levers_section(tmp_path / "run")
    assert "| Algorithm 2: nominal and worst-case mix |" in section
    assert "python -m studies.levers" in section
    assert (
        "- mixes alone: worst-case and random mix: " in section and "points of the gap" in section
    )
    assert all(0 <= r["label_noise"][0] <= r["fooled"][0] for r in rows)
    assert "tried in the next section" in diagnostics_table(results, tmp_path / "run", 0.02)
    assert levers_section(out) == "" and "(results-16k.md)" in diagnostics_table(results, out, 0.02)

"""The demo's study flow end to end on tiny networks: encode -> train -> evaluate -> report."""

import json

import pytest

from studies.demo import write_report
from studies.study import StudyConfig, run_study
from tests.tiny_nets import tiny_generator


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cfg = StudyConfig(
        methods=("nominal", "randmix", "advmix"),
        train_images=48,
        encode_steps=2,
        encode_batch=16,
        epochs=1,
        batch_size=16,
        attack_steps=1,
        test_limit=40,
        generator=str(tiny_generator(out / "G.pt", k=4)),
        extra_train_flags=("--no-progress",),
        extra_encode_flags=("--mix-steps", "1"),  # as the demo encodes: the mixing loss last
        equal_compute=True,
    )
    return cfg, out, run_study(cfg, out / "run")


def test_study_trains_every_method_from_one_store(study):
    cfg, out, results = study
    assert [(r["method"], r["seed"]) for r in results] == [
        ("nominal", 0), ("randmix", 0), ("advmix", 0), ("randmix-long", 0)]  # fmt: skip
    for row in results:
        assert all(0.0 <= row[split] <= 1.0 for split in ("iid", "random", "swapped"))
        assert row["train_s"] > 0


def test_randmix_gets_at_least_advmix_seconds(study):
    cfg, out, results = study
    rows = {r["method"]: r for r in results}
    assert rows["randmix-long"]["epochs"] > rows["randmix"]["epochs"] == cfg.epochs
    # the seconds it actually spent, not a prediction from RandMix's first epochs: the study
    # extends the run when the machine's load makes epochs faster than predicted
    assert rows["randmix-long"]["train_s"] >= rows["advmix"]["train_s"]
    assert len(list((out / "run" / "stores").iterdir())) == 1
    assert json.loads((out / "run" / "results.json").read_text()) == results


def test_rerun_reuses_every_step(study, capsys):
    cfg, out, results = study
    again = run_study(cfg, out / "run")
    assert again == results
    printed = capsys.readouterr().out
    assert "reusing the store" in printed and "encoding" not in printed


def test_report_has_table_plot_and_grids(study):
    cfg, out, results = study
    report = write_report(cfg, out / "run", results, wall_s=1.0).read_text()
    assert "| 0.05 | AdvMix | 1 | 1 |" in report and "| 0.05 | nominal |" in report
    assert "| 0.05 | RandMix, AdvMix's seconds | 1 |" in report
    assert "- `random`: AdvMix" in report and "- `swapped`: AdvMix" in report
    assert "2 inversion steps from the mean style, the mixing loss on the last 1)" in report
    for picture in ("accuracy.png", "reconstructions.png", "adversarial-mixes.png"):
        assert f"]({picture})" in report and (out / "run" / picture).stat().st_size > 1000


def test_timings_keep_every_step_across_sittings(study):
    cfg, out, results = study
    seconds = json.loads((out / "run" / "timings.json").read_text())
    assert set(seconds) == {"encode sigma-0.05", "nominal sigma-0.05 seed-0",
                            "randmix sigma-0.05 seed-0", "advmix sigma-0.05 seed-0",
                            "randmix-long sigma-0.05 seed-0"}  # fmt: skip


def test_timings_add_up_over_sittings(tmp_path):
    from studies.study import Timings

    first = Timings(tmp_path / "timings.json")
    first.record("encode sigma-0.02", 600.0)
    first.record("advmix sigma-0.02 seed-0", 120.25)
    again = Timings(tmp_path / "timings.json")  # a later sitting reads what the first kept
    again.record("advmix sigma-0.02 seed-0", 30.0)
    assert again.seconds == {"encode sigma-0.02": 600.0, "advmix sigma-0.02 seed-0": 150.2}
    assert again.total == pytest.approx(750.2)


def test_oracle_gap_is_measured_at_the_strongest_correlation():
    from studies.report import oracle_gap

    rows = [
        {"sigma": s, "method": m, "seed": seed, "iid": 1.0, "random": acc + seed * 0.02,
         "swapped": 0.5}
        for s, m, acc in [(0.02, "nominal", 0.2), (0.02, "oracle", 0.8), (0.02, "advmix", 0.65),
                          (0.1, "nominal", 0.7), (0.1, "oracle", 0.8), (0.1, "advmix", 0.79)]
        for seed in (0, 1)
    ]  # fmt: skip
    gap = oracle_gap(rows)
    assert gap["sigma"] == 0.02
    assert gap["gap_closed"]["advmix"] == pytest.approx(0.75)
    assert gap["gap_closed"]["nominal"] == 0 and gap["gap_closed"]["oracle"] == 1
    with pytest.raises(ValueError, match="nominal and oracle"):
        oracle_gap([r for r in rows if r["method"] != "oracle"])


def test_results_page_states_both_ceilings():
    from studies.report import oracle_gap
    from studies.reproduce import gap_text

    rows = [{"sigma": 0.02, "method": m, "seed": 0, "iid": 1.0, "random": acc, "swapped": 0.5}
            for m, acc in [("nominal", 0.2), ("oracle", 0.7), ("advmix", 0.6)]]  # fmt: skip
    gap = oracle_gap(rows, reference=1.0)
    text = gap_text(gap, {"nominal": "nominal", "oracle": "oracle", "advmix": "AdvMix"})
    assert "| AdvMix | 0.600 | 80% | 50% |" in text and "scores\n1.000 on `random`" in text


def test_init_study_trains_advmix_alone_from_each_store():
    from studies.init_study import plan_arms

    arms = plan_arms("E.pt", [20], 5, 100)
    assert list(arms) == ["mean-100", "encoder-20-mix5"]
    for cfg in arms.values():  # no RandMix runs, so none to give AdvMix's seconds to
        assert cfg.methods == ("advmix",) and not cfg.equal_compute and cfg.seeds == (0, 1, 2)
    assert (arms["mean-100"].encoder, arms["mean-100"].encode_steps) == (None, 100)
    assert arms["mean-100"].extra_encode_flags == ()
    cheap = arms["encoder-20-mix5"]
    assert (cheap.encoder, cheap.encode_steps) == ("E.pt", 20)
    assert cheap.extra_encode_flags == ("--mix-steps", "5")


@pytest.mark.parametrize("module", ["studies.demo", "studies.reproduce"])
def test_workers_below_one_is_a_one_line_error(module, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--workers", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("--workers must be at least 1 (got 0)")
    assert list(tmp_path.iterdir()) == []  # nothing started

"""The demo's study flow end to end on tiny networks: encode -> train -> evaluate -> report."""

import json

import pytest

from tests.tiny_nets import tiny_generator
from training.demo import write_report
from training.study import StudyConfig, run_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cfg = StudyConfig(
        methods=("nominal", "advmix"),
        train_images=48,
        encode_steps=2,
        encode_batch=16,
        epochs=1,
        batch_size=16,
        attack_steps=1,
        test_limit=40,
        generator=str(tiny_generator(out / "G.pt", k=4)),
        extra_train_flags=("--no-progress",),
    )
    return cfg, out, run_study(cfg, out / "run")


def test_study_trains_every_method_from_one_store(study):
    cfg, out, results = study
    assert [(r["method"], r["seed"]) for r in results] == [("nominal", 0), ("advmix", 0)]
    for row in results:
        assert all(0.0 <= row[split] <= 1.0 for split in ("iid", "random", "swapped"))
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
    assert "| 0.05 | AdvMix |" in report and "| 0.05 | nominal |" in report
    for picture in ("accuracy.png", "reconstructions.png", "adversarial-mixes.png"):
        assert f"]({picture})" in report and (out / "run" / picture).stat().st_size > 1000

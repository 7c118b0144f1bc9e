"""IRM's Colored Fashion-MNIST (``irmcf:``) on the committed Fashion-MNIST subset, and IRMv1:
the construction's statistics and pixel rule, seeded slices, one-line bad specs, the penalty
on a case with a known value, and the environment reaching the store and the trainer."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_nets import tiny_features, tiny_generator

from advmix import irmcf
from advmix.datasets import find_root, load, load_idx_pair
from advmix.errors import AdvmixError, DataError
from advmix.objectives import SINGLE_LABEL
from advmix.spec import parse_spec
from training.methods import IRMBatch, irm_penalty, irm_weight


def _tolerance(p: float, n: int) -> float:
    return 4.5 * math.sqrt(p * (1 - p) / n)  # a binomial proportion, far beyond chance misses


@pytest.fixture(scope="module")
def raw():
    return load_idx_pair(find_root("cfmnist"), train=True)


def test_training_environments_follow_the_published_construction(raw):
    gray, classes = raw
    data = load("irmcf:train?seed=3")
    kept = int((classes != 8).sum())
    env = data.attributes[:, 0]
    assert data.attribute_names == ("env",) and len(data) == kept
    assert env.tolist() == sorted(env.tolist())  # environment 0 first
    assert (env == 0).sum() == (kept + 1) // 2 and (env == 1).sum() == kept // 2
    built = irmcf.construct(gray, classes, "train", seed=3)
    assert 8 not in classes[built.source]
    for e, p_e in enumerate((0.2, 0.1)):
        mine = env == e
        n = int(mine.sum())
        source = built.source[mine]
        assert (np.diff(source) > 0).all()  # Fashion-MNIST's order within an environment
        clean = np.isin(classes[source], (5, 7, 9))
        flipped = (data.labels[mine] != clean).mean()
        assert abs(flipped - 0.25) < _tolerance(0.25, n)
        colour = irmcf.colour_of(data.images[mine])
        assert (colour >= 0).all()
        agree = (colour == data.labels[mine]).mean()
        assert abs(agree - (1 - p_e)) < _tolerance(p_e, n)
    positives = 0.75 * np.isin(classes[classes != 8], (5, 7, 9)).mean() + 0.25 * (
        1 - np.isin(classes[classes != 8], (5, 7, 9)).mean()
    )
    assert abs(data.labels.mean() - positives) < _tolerance(positives, kept)


def test_train_random_is_train_with_colours_independent_of_the_label():
    biased, free = load("irmcf:train?seed=3"), load("irmcf:train-random?seed=3")
    assert np.array_equal(biased.labels, free.labels)  # same items, environments and labels
    assert np.array_equal(biased.attributes, free.attributes)
    assert np.array_equal(biased.images.max(axis=1), free.images.max(axis=1))  # same items
    colour = irmcf.colour_of(free.images)
    for label in (0, 1):
        red = (colour[free.labels == label] == 1).mean()
        assert abs(red - 0.5) < _tolerance(0.5, int((free.labels == label).sum()))


def test_the_test_environment_flips_colour_nine_times_in_ten():
    data = load("irmcf:test")
    assert data.attributes is None and data.attribute_names == ()
    assert data.label_names == ("clothing", "footwear")
    agree = (irmcf.colour_of(data.images) == data.labels).mean()
    assert abs(agree - 0.1) < _tolerance(0.1, len(data))


def test_pixels_follow_the_threshold_rule(raw):
    gray, classes = raw
    built = irmcf.construct(gray, classes, "train", seed=0)
    images = load("irmcf:train?limit=50").images
    padded = np.pad(built.gray[:50], ((0, 0), (2, 2), (2, 2)))
    bright = padded > 0.5 * 255
    for image, item, lit, red in zip(images, padded, bright, built.red[:50], strict=True):
        on, off = (image[0], image[1]) if red else (image[1], image[0])
        assert (on[lit] == 255).all() and (off[lit] == 0).all()
        assert (on[~lit] == item[~lit]).all() and (off[~lit] == item[~lit]).all()
        assert (image[2] == 0).all()
    assert images.shape == (50, 3, 32, 32) and images.dtype == np.uint8


def test_a_seed_gives_the_same_data_and_slices_do_not_change_samples():
    full = load("irmcf:train?seed=1")
    again = load("irmcf:train?seed=1")
    other = load("irmcf:train?seed=2")
    np.testing.assert_array_equal(full.images, again.images)
    assert not np.array_equal(full.labels, other.labels)
    part = load("irmcf:train?seed=1&offset=900&limit=40")
    np.testing.assert_array_equal(part.images, full.images[900:940])
    np.testing.assert_array_equal(part.attributes, full.attributes[900:940])
    assert part.ids == full.ids[900:940] and part.ids[0] == "irmcf/train/000900"


@pytest.mark.parametrize(
    "text, message",
    [
        ("irmcf:nope", "unknown split 'nope' (known: train, train-random, test)"),
        ("irmcf:train?sigma=0.1", "irmcf takes no option 'sigma'"),
        ("irmcf:test?gray=1", "irmcf takes no option 'gray'"),
        ("irmcf:train?colour=red", "unknown option 'colour'"),
        ("irmcf:test?limit=0", "limit must be >= 1"),
    ],
)
def test_bad_specs_are_one_line(text, message):
    with pytest.raises(DataError, match=re.escape(message)) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)


def test_an_offset_past_the_end_is_one_line():
    with pytest.raises(DataError, match="offset 5000 >= 926 samples") as info:
        load("irmcf:test?offset=5000")
    assert "\n" not in str(info.value)


def test_a_bad_spec_on_the_command_line_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cli.main", "data", "preview", "--dataset", "irmcf:nope",
                             "--out", str(tmp_path / "x.png")], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "unknown split 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_irm_penalty_matches_its_closed_form():
    # Two logits (0, a), label 1: risk(s) = log(1 + exp(-s a)), so d risk / ds at s = 1 is
    # -a * sigmoid(-a) and the penalty is its square.
    a = torch.tensor(math.log(3.0), requires_grad=True)
    logits = torch.stack([torch.zeros(()), a])[None]
    penalty = irm_penalty(logits, torch.tensor([1]), SINGLE_LABEL)
    assert penalty.item() == pytest.approx((math.log(3.0) / 4) ** 2, rel=1e-5)
    # it stays in the graph: d penalty / da = 2 g dg/da, g = -a s(-a), dg/da = -s(-a) + a s s'
    (grad,) = torch.autograd.grad(penalty, [a])
    s = 0.25
    g = -math.log(3.0) * s
    dg = -s + math.log(3.0) * s * (1 - s)
    assert grad.item() == pytest.approx(2 * g * dg, rel=1e-5)
    # a constant predictor's risk does not depend on the scale: no penalty
    zero = irm_penalty(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]), SINGLE_LABEL)
    assert zero.item() == 0.0


def test_irm_loss_anneals_and_rescales_per_environment():
    logits = torch.tensor([[0.0, 1.0], [0.5, -0.5], [0.0, 2.0], [1.0, 0.0]])
    targets = torch.tensor([1, 0, 0, 1])
    envs = torch.tensor([0, 0, 1, 1])
    nll = [SINGLE_LABEL.mean_loss(logits[envs == e], targets[envs == e]) for e in (0, 1)]
    pen = [irm_penalty(logits[envs == e], targets[envs == e], SINGLE_LABEL) for e in (0, 1)]
    risk, penalty = (nll[0] + nll[1]) / 2, (pen[0] + pen[1]) / 2
    early = IRMBatch(logits, targets, SINGLE_LABEL, envs=envs, penalty_weight=1.0)
    late = IRMBatch(logits, targets, SINGLE_LABEL, envs=envs, penalty_weight=1000.0)
    assert early.loss(logits).item() == pytest.approx((risk + penalty).item(), rel=1e-6)
    assert late.loss(logits).item() == pytest.approx((risk / 1000 + penalty).item(), rel=1e-6)

    class Cfg:
        irm_penalty_weight, irm_anneal_steps = 500.0, 3

    assert [irm_weight(Cfg, step) for step in range(5)] == [1.0, 1.0, 1.0, 500.0, 500.0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("irmcf")
    G, F = tiny_generator(root / "G.pt"), tiny_features(root / "F.pt")
    spec = "irmcf:train?offset=918&limit=10"  # across the boundary of the two environments
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.encode", "--input", spec, "--output", str(root / "s"),
         "--generator", str(G), "--features", str(F), "--steps", "1", "--batch-size", "5",
         "--shard-size", "5", "--w-avg-samples", "16"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"url": str(root / "s"), "G": str(G), "spec": spec, "root": root}


def test_the_environment_reaches_the_store_index(store):
    index = pd.read_parquet(f"{store['url']}/index.parquet")
    data = load(store["spec"])
    assert index["env"].tolist() == data.attributes[:, 0].tolist() == [0] * 5 + [1] * 5
    assert index["label"].tolist() == data.labels.tolist()


def test_irm_trains_on_the_stores_environments_and_needs_them(store, tmp_path):
    from cli.main import main

    common = ["train", "--store", store["url"], "--generator", store["G"], "--epochs", "1",
              "--batch-size", "10", "--width", "4", "--no-progress", "--log-every", "1"]  # fmt: skip
    main([*common, "--method", "irm", "--irm-anneal-steps", "0", "--irm-penalty-weight", "100",
          "--out", str(tmp_path / "irm")])  # fmt: skip
    record = json.loads((tmp_path / "irm" / "run.json").read_text())
    assert record["config"]["method"] == "irm" and record["config"]["irm_penalty_weight"] == 100
    lines = [
        json.loads(line) for line in (tmp_path / "irm" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["loss"]) for r in lines if r.get("event") == "train")
    # a store without environments: one line, before any step
    from store_helpers import write_store

    from schemas.reader import open_store
    from training.methods import env_column

    write_store(str(tmp_path / "plain"))
    with pytest.raises(AdvmixError, match="needs environment labels") as info:
        env_column("irm", open_store(str(tmp_path / "plain")))
    assert "\n" not in str(info.value)
    assert env_column("nominal", open_store(str(tmp_path / "plain"))) is None


def test_the_grayscale_oracle_sees_no_colour(raw):
    """--grayscale (max over RGB) gets the same input from the red and the green version of an
    item, so the oracle cannot use colour."""
    from advmix.classifiers import make_classifier

    gray = raw[0][:4]
    red = torch.from_numpy(irmcf.colorize(gray, np.ones(4, dtype=np.int64))) / 255.0
    green = torch.from_numpy(irmcf.colorize(gray, np.zeros(4, dtype=np.int64))) / 255.0
    torch.manual_seed(0)
    oracle = make_classifier(2, 8, grayscale=True).eval()
    with torch.no_grad():
        assert torch.equal(oracle(red), oracle(green))
    # what it sees: the item with its bright pixels at full intensity
    seen = np.pad(np.where(gray >= 128, 255, gray), ((0, 0), (2, 2), (2, 2))) / 255.0
    assert torch.allclose(oracle.prepare(red)[:, 0], torch.from_numpy(seen).float())


@pytest.mark.slow
def test_the_study_writes_the_table_and_results_from_its_records(tmp_path):
    """studies.irm end to end on the fixture subset with a tiny generator: stores, the data
    statistics, one seed of ERM and IRMv1, results-irm.json and the page."""
    from studies.irm import IRMStudyConfig, run, write_docs

    G = tiny_generator(tmp_path / "G.pt")
    cfg = IRMStudyConfig("smoke", methods=("ERM", "IRMv1"), seeds=(0,), generator=str(G),
                         encode_steps=1, encode_init="mean", epochs=1)  # fmt: skip
    records, docs = tmp_path / "records", tmp_path / "docs"
    docs.mkdir()
    results = run(cfg, tmp_path / "out", records)
    assert set(results["methods"]) == {"ERM", "IRMv1"}
    assert results["methods"]["IRMv1"]["seeds"] == 1
    assert 0 <= results["methods"]["ERM"]["test"] <= 1
    assert set(results["methods"]["ERM"]["follows_colour"]) == {"train", "test"}
    assert json.loads((records / "mixes.json").read_text())["k"] == 4
    data = json.loads((records / "data.json").read_text())
    assert set(data["train"]) == {"env 0", "env 1"} and set(data["test"]) == {"test"}
    assert data["train"]["env 0"]["n"] + data["train"]["env 1"]["n"] == len(load("irmcf:train"))
    written = write_docs(records, docs)
    assert json.loads((docs / "results-irm.json").read_text()) == written
    text = (docs / "irm-benchmark.md").read_text()
    assert "| IRMv1 |" in text and "python -m studies.irm --preset smoke" in text
    assert "AdvMix has no row yet" in text and "fine styles do to these images" in text


@pytest.mark.slow
def test_the_study_fine_tunes_a_generator_on_irmcf_and_uses_it(tmp_path):
    """With gan_iterations and gan_init the study fine-tunes the given generator on
    irmcf:train without labels, measures its k with irmcf images as the real reference,
    records it (gan.json) and encodes and trains with it; the page carries its model card."""
    from studies.irm import IRMStudyConfig, run, write_docs
    from studies.study import train_seconds

    start = tiny_generator(tmp_path / "G0.pt")
    cfg = IRMStudyConfig("smoke", methods=("RandMix-long",), seeds=(0,), generator=str(start),
                         gan_iterations=2, gan_init=str(start), encode_steps=1,
                         encode_init="mean", epochs=1)  # fmt: skip
    records, docs = tmp_path / "records", tmp_path / "docs"
    docs.mkdir()
    run(cfg, tmp_path / "out", records)
    card = json.loads((records / "gan.json").read_text())
    assert card["init_from"] == str(start) and card["iterations"] == 2
    assert card["dataset"] == "irmcf:train" and card["evaluate"]["real"] == "irmcf:test"
    used = json.loads((records / "RandMix" / "seed-0" / "run.json").read_text())["generator"]
    assert used["path"] == str(tmp_path / "out" / "gan" / "G.pt")
    assert used["fingerprint"] == card["fingerprint"]
    # RandMix at AdvMix's seconds trains its pair first and spends at least AdvMix's seconds
    results = write_docs(records, docs)["methods"]
    assert set(results) == {"RandMix", "AdvMix", "RandMix-long"}
    runs = tmp_path / "out" / "runs"
    assert train_seconds(runs / "RandMix-long" / "seed-0") >= train_seconds(
        runs / "AdvMix" / "seed-0"
    )
    text = (docs / "irm-benchmark.md").read_text()
    assert "## The generator (model card)" in text
    assert "- AdvMix " in text.split("## At equal compute")[1] and "against RandMix-long" in text


def test_the_page_judges_advmix_against_randmix_at_its_seconds():
    from studies.irm_verdicts import equal_compute_bullets

    rows = {name: {"test": test, "test_std": std, "seeds": 3}
            for name, test, std in (("AdvMix", 0.30, 0.05), ("RandMix-long", 0.20, 0.02),
                                    ("AdvMix-mixes", 0.74, 0.002),
                                    ("RandMix-mixes-long", 0.741, 0.003))}  # fmt: skip
    assert equal_compute_bullets(rows) == [
        "- AdvMix 30.0 ± 5.0% against RandMix-long 20.0 ± 2.0% at test (3 seeds): AdvMix is "
        "ahead (+10.0 points, std up to 5.0).",
        "- AdvMix-mixes 74.0 ± 0.2% against RandMix-mixes-long 74.1 ± 0.3% at test (3 seeds): "
        "AdvMix-mixes is level with it (-0.1 points, std up to 0.3).",
    ]  # fmt: skip
    assert equal_compute_bullets({"AdvMix": rows["AdvMix"]}) == []  # no partner, no verdict

"""The paper's CelebA experiment on a small synthetic fixture in CelebA's own layout, with an
imported 64 px generator: the Beam job keeps every attribute, one store serves a run per
attribute (and a multi-label run), evaluation reports per attribute, the study writes the
paper's table; bad attribute files get one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_nets import tiny_features

from cli.main import main
from schemas.reader import open_store

ATTRIBUTES = ["5_o_Clock_Shadow", "Smiling", "Male", "Young"]
PARTITION = [0] * 24 + [1] * 4 + [2] * 8  # train, valid, test
FIXTURES = "tests/fixtures/stylegan2"


def write_celeba(root, broken: str | None = None) -> None:
    """36 aligned-face-sized (178x218) images, their ±1 attributes and the partition; with
    ``broken``, one defect of that kind."""
    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(PARTITION))]
    values = rng.choice([-1, 1], size=(len(names), len(ATTRIBUTES)))
    for name, row in zip(names, values, strict=True):
        if broken == "missing" and name == names[3]:
            continue  # listed in the attribute file, no image on disk
        tone = 60 + 120 * (row[1] > 0)  # smiling faces are brighter: something to learn
        image = np.full((218, 178, 3), tone, dtype=np.uint8)
        image[40:180, 30:150] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(root / "img_align_celeba" / name, quality=95)
    rows = [f"{n} " + " ".join(f"{v:2d}" for v in r) for n, r in zip(names, values, strict=True)]
    if broken == "row":
        rows[5] = rows[5].rsplit(" ", 1)[0]  # a value short
    if broken == "value":
        rows[7] = rows[7][:-2] + " 2"
    header = [str(len(names)), " ".join(ATTRIBUTES)]
    (root / "list_attr_celeba.txt").write_text("\n".join(header + rows) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "\n".join(f"{n} {p}" for n, p in zip(names, PARTITION, strict=True)) + "\n"
    )


def encode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.encode", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    write_celeba(root / "data")
    ref = torch.load(f"{FIXTURES}/rosinality-64.pt", weights_only=True)
    torch.save({"g_ema": ref["g_ema"], "latent_avg": ref["latent_avg"]}, root / "g.pt")
    main(["gan", "import", str(root / "g.pt"), "--out", str(root / "G.pt"), "--k", "4"])
    features = tiny_features(root / "F.pt")
    stores = {}
    for split in ("train", "test"):
        result = encode("--input", f"celeba:{split}?root={root / 'data'}", "--output",
                        str(root / split), "--generator", str(root / "G.pt"), "--features",
                        str(features), "--steps", "1", "--batch-size", "8", "--shard-size", "8",
                        "--w-avg-samples", "16")  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        stores[split] = str(root / split)
    return {"root": root, "G": str(root / "G.pt"), "F": str(features), **stores}


def test_the_store_keeps_every_attribute_at_the_generators_resolution(celeba):
    store = open_store(celeba["train"])
    assert store.manifest.schema_version == 2 and store.attribute_names == tuple(ATTRIBUTES)
    assert store.num_samples == 24 and store.image_shape == (3, 64, 64)  # 178x218 -> 64x64
    assert store.encoder["preprocess"] == {"resize": "center-crop", "size": 64}
    index = store.index()
    assert list(index.columns[-4:]) == ATTRIBUTES and index["split"].eq("train").all()
    shard = store.read_shard(0)
    np.testing.assert_array_equal(shard.attributes, index[ATTRIBUTES].to_numpy()[:8])
    assert open_store(celeba["test"]).num_samples == 8


def test_one_store_serves_a_run_per_attribute_and_a_multi_label_run(celeba, tmp_path, capsys):
    common = ["--store", celeba["train"], "--generator", celeba["G"], "--epochs", "1",
              "--batch-size", "8", "--width", "4", "--attack-steps", "1",
              "--style-samples", "64", "--no-progress"]  # fmt: skip
    for name, targets, method in (("smiling", ["Smiling"], "nominal"),
                                  ("male", ["Male"], "advmix"),
                                  ("both", ["Smiling", "Male"], "advmix")):  # fmt: skip
        flags = [arg for t in targets for arg in ("--target", t)]
        main(["train", *common, "--method", method, *flags, "--out", str(tmp_path / name)])
        record = json.loads((tmp_path / name / "run.json").read_text())
        assert record["targets"] == targets and record["config"]["target"] == targets
    capsys.readouterr()
    main(["evaluate", "--checkpoint", str(tmp_path / "both" / "classifier.pt"), "--store",
          celeba["test"], "--attack", "advmix", "--generator", celeba["G"], "--attack-steps", "1",
          "--style-samples", "64", "--json-out", str(tmp_path / "eval.json")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "  Smiling" in printed and "  Male" in printed
    row = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    assert set(row["per_target"]) == {"Smiling", "Male"}
    assert all(0 <= v["robust_accuracy"] <= 1 for v in row["per_target"].values())


def test_the_study_writes_the_papers_table(celeba, tmp_path):
    from studies.celeba import CelebAConfig, collect, run, table

    cfg = CelebAConfig(
        root=str(celeba["root"] / "data"), generator=celeba["G"], attributes=("Smiling", "Male"),
        methods=("nominal", "advmix"), encode_steps=1, encode_batch=8, epochs=1, batch_size=8,
        attack_steps=1, features=celeba["F"], extra_encode_flags=("--w-avg-samples", "16"),
        extra_train_flags=("--width", "4", "--style-samples", "64", "--no-progress"),
    )  # fmt: skip
    rows = run(cfg, tmp_path / "study")
    assert len(rows) == 4
    text = (tmp_path / "study" / "table.md").read_text()
    assert text.splitlines()[0] == "| method | Smiling | Male |"
    assert text.splitlines()[2].startswith("| nominal | ") and "AdvMix" in text
    assert table(collect(tmp_path / "study")) == text.strip()


def test_the_table_reads_the_runs_docs_celeba_writes_and_names_what_it_misses(celeba, tmp_path):
    """docs/celeba.md trains into OUT/runs/<attribute>/<method> and evaluates with --json-out
    there; the table command reads exactly that, and says which cells it leaves blank."""
    out = tmp_path / "celeba"
    run = out / "runs" / "Smiling" / "nominal"
    main(["train", "--store", celeba["train"], "--generator", celeba["G"], "--method", "nominal",
          "--target", "Smiling", "--epochs", "1", "--batch-size", "8", "--width", "4",
          "--out", str(run), "--no-progress"])  # fmt: skip
    main(["evaluate", "--checkpoint", str(run / "classifier.pt"), "--store", celeba["test"],
          "--attack", "advmix", "--generator", celeba["G"], "--attack-steps", "1",
          "--style-samples", "64", "--json-out", str(run / "eval.json")])  # fmt: skip
    (out / "runs" / "Smiling" / "advmix").mkdir()  # trained, not evaluated yet
    shutil.copy(run / "classifier.pt", out / "runs" / "Smiling" / "advmix")
    (out / "runs" / "Smiling" / "at").mkdir()  # not a method of the table

    def table_only(folder):
        return subprocess.run([sys.executable, "-m", "studies.celeba", "--table-only", "--out",
                               str(folder)], capture_output=True, text=True, timeout=300)  # fmt: skip

    result = table_only(out)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (out / "table.md").read_text().splitlines()
    assert lines[:2] == ["| method | Smiling |", "|---|---|"]
    assert lines[2].startswith("| nominal | ") and lines[3:5] == ["", "Not in the table:"]
    assert lines[5:] == [
        f"- {out}/runs/Smiling/advmix/eval.json is missing: trained, not evaluated "
        "(advmix evaluate --json-out writes it)",
        f"- {out}/runs/Smiling/at is left out: not one of the table's methods "
        "(nominal, at-4, at-8, randmix, advmix)",
    ]
    result = table_only(tmp_path / "elsewhere")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: no evaluated runs in {tmp_path / 'elsewhere'}: ")


@pytest.mark.parametrize(
    "broken, message",
    [
        ("row", "line 8: 3 values for 4 attributes"),
        ("value", "attribute value '2' is not -1, 0 or 1"),
    ],
)
def test_a_bad_attribute_file_is_one_line(celeba, tmp_path, broken, message):
    write_celeba(tmp_path / "data", broken)
    result = encode("--input", f"celeba:train?root={tmp_path / 'data'}", "--output",
                    str(tmp_path / "out"), "--generator", celeba["G"], "--features", celeba["F"],
                    "--steps", "1")  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_missing_image_is_dead_lettered_and_counts_add_up(celeba, tmp_path):
    write_celeba(tmp_path / "data", "missing")
    result = encode("--input", f"celeba:train?root={tmp_path / 'data'}", "--output",
                    str(tmp_path / "out"), "--generator", celeba["G"], "--features", celeba["F"],
                    "--steps", "1", "--batch-size", "8", "--w-avg-samples", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "listed 24: encoded 23, rejected 1, skipped 0" in result.stdout
    dead = open_store(str(tmp_path / "out")).dead_letters()
    assert dead[["id", "reason"]].values.tolist() == [
        ["000004.jpg", "missing image: file not found"]
    ]


def test_unknown_targets_and_stores_without_attributes_are_one_line(celeba, tmp_path, capsys):
    from train_helpers import write_store

    from tests.test_failures import one_error_line

    def train(store, *targets):
        try:
            main(["train", "--store", store, "--generator", celeba["G"], "--out",
                  str(tmp_path / "r"), *[a for t in targets for a in ("--target", t)]])  # fmt: skip
        except SystemExit as exc:
            return exc.code, capsys.readouterr().err
        return 0, capsys.readouterr().err

    code, err = train(celeba["train"], "Bald")
    assert code == 1 and "--target Bald: not an attribute of" in one_error_line(err)
    from advmix.checkpoints import generator_fingerprint, load_generator

    G = load_generator(celeba["G"])
    v1 = write_store(str(tmp_path / "v1.zarr"), num_samples=16, shard_size=8, num_ws=10,
                     w_dim=64, fingerprint=generator_fingerprint(G), images=False)  # fmt: skip
    code, err = train(v1, "Smiling")
    assert code == 1 and "store without attributes (schema version 1)" in one_error_line(err)


def test_a_folder_with_an_attribute_table(celeba, tmp_path):
    """A flat folder of any-size images and a CSV of named attributes (0/1 or ±1)."""
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    lines = ["file,Smiling,Eyeglasses"]
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png"
        )
        lines.append(f"{i}.png,{i % 2},{-1 if i < 5 else 1}")
    (tmp_path / "attrs.csv").write_text("\n".join(lines) + "\n")
    result = encode("--input", str(tmp_path / "imgs"), "--attributes", str(tmp_path / "attrs.csv"),
                    "--output", str(tmp_path / "out"), "--generator", celeba["G"], "--features",
                    celeba["F"], "--steps", "1", "--batch-size", "10", "--w-avg-samples", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    store = open_store(str(tmp_path / "out"))
    assert store.attribute_names == ("Smiling", "Eyeglasses") and store.label_names == ()
    np.testing.assert_array_equal(store.index()["Eyeglasses"].to_numpy(), [0] * 5 + [1] * 5)


def test_a_resnet_classifier_at_its_own_input_size(celeba, tmp_path):
    main(["train", "--store", celeba["train"], "--generator", celeba["G"], "--method", "advmix",
          "--target", "Smiling", "--arch", "resnet18", "--input-size", "32", "--epochs", "1",
          "--batch-size", "8", "--attack-steps", "1", "--style-samples", "64", "--max-steps", "2",
          "--out", str(tmp_path / "run"), "--no-progress"])  # fmt: skip
    from advmix.classifiers import load_classifier

    model, _ = load_classifier(tmp_path / "run" / "classifier.pt")
    assert model.cfg.arch == "resnet18" and model.cfg.input_size == 32
    # the generator decodes 64 px; the classifier reads them at its own 32 px
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2)


def test_imagenet_weights_load_and_another_resnets_are_one_line(celeba, tmp_path, capsys):
    from torchvision import models

    from advmix.classifiers import load_classifier
    from tests.test_failures import one_error_line

    def train(arch, weights, out):
        try:
            main(["train", "--store", celeba["train"], "--generator", celeba["G"], "--method",
                  "nominal", "--target", "Smiling", "--arch", arch, "--arch-weights", weights,
                  "--input-size", "32", "--epochs", "1", "--batch-size", "8", "--max-steps", "1",
                  "--out", str(tmp_path / out), "--no-progress"])  # fmt: skip
        except SystemExit as exc:
            return exc.code, capsys.readouterr().err
        return 0, capsys.readouterr().err

    r50 = tmp_path / "r50.pt"
    torch.save(models.resnet50(weights=None).state_dict(), r50)
    code, err = train("resnet18", str(r50), "wrong")
    assert code == 1 and one_error_line(err) == (
        f"Error: {r50}: not resnet18 weights: layer1.0.conv1.weight is (64, 64, 1, 1) in the "
        "file, (64, 64, 3, 3) in resnet18"
    )
    r18 = models.resnet18(weights=None).state_dict()
    r18["conv1.weight"] = torch.full_like(r18["conv1.weight"], 0.5)  # recognisable after a step
    torch.save(r18, tmp_path / "r18.pt")
    code, err = train("resnet18", str(tmp_path / "r18.pt"), "right")
    assert code == 0, err
    model, _ = load_classifier(tmp_path / "right" / "classifier.pt")
    assert (model.net.conv1.weight - 0.5).abs().max() < 0.01  # one Adam step of 1e-3 away

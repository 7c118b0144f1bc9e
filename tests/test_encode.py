"""The Beam encode job end to end on real runners, real stores and real Fashion-MNIST."""

import io
import json
import subprocess
import sys

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from advmix.checkpoints import generator_fingerprint, load_generator
from advmix.datasets import load
from pipeline.encode import run
from schemas.reader import open_store
from schemas.testing import moto_s3
from tests.tiny_nets import tiny_features, tiny_generator

SPEC = "cfmnist:train?limit=40"


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    return tiny_generator(root / "G.pt"), tiny_features(root / "F.pt")


def _args(nets, output, *extra, source=SPEC):
    G, F = nets
    return [
        "--input", source, "--output", str(output), "--generator", str(G), "--features", str(F),
        "--steps", "3", "--batch-size", "8", "--shard-size", "16", "--w-avg-samples", "32",
        *extra,
    ]  # fmt: skip


def _checksums(url, **kw):
    return [tuple(o.sha256 for o in s.objects) for s in open_store(url, **kw).manifest.shards]


@pytest.fixture(scope="module")
def reference(nets, tmp_path_factory):
    """One uninterrupted in-memory run that other tests compare against."""
    out = tmp_path_factory.mktemp("ref") / "store"
    counts = run(_args(nets, out))
    return out, counts


def test_in_memory_run_writes_a_complete_store(nets, reference):
    out, counts = reference
    assert counts["read"] == 40 and counts["encoded"] == 40 and counts["rejected"] == 0
    store = open_store(str(out), full_check=True)
    source = load(SPEC)
    G = load_generator(nets[0])
    assert store.num_shards == 3 and store.manifest.provenance.k == 4
    assert store.manifest.provenance.generator_fingerprint == generator_fingerprint(G)
    assert store.manifest.provenance.dataset == SPEC
    assert store.manifest.provenance.encoder["steps"] == 3
    assert "betas" not in store.manifest.provenance.encoder  # the paper's Adam, as ever
    assert "mix_steps" not in store.manifest.provenance.encoder  # the mixing loss every step
    shards = [store.read_shard(s) for s in range(3)]
    w = np.concatenate([s.w for s in shards])
    assert w.shape == (40, G.num_ws, 32) and np.isfinite(w).all()
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), source.labels)
    np.testing.assert_array_equal(np.concatenate([s.images for s in shards]), source.images)
    index = store.index()
    assert index["id"].tolist() == source.ids
    assert (index["split"] == "train").all() and index["rec_psnr"].between(0, 100).all()


def test_multi_processing_workers_write_identical_shards(nets, reference, tmp_path):
    out = tmp_path / "mp"
    extra = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    counts = run(_args(nets, out, *extra))
    assert counts["encoded"] == 40
    assert _checksums(str(out)) == _checksums(str(reference[0]))


def test_resume_skips_complete_shards_and_matches(nets, reference, tmp_path):
    out = tmp_path / "resumed"
    run(_args(nets, out))
    # Simulate a crash during shard 1 before the commit: no manifest, no completion record,
    # a half-written shard object.
    (out / "manifest.json").unlink()
    (out / "shards" / "shard-00001.json").unlink()
    (out / "w" / "c" / "1" / "0" / "0").write_bytes(b"partial")
    counts = run(_args(nets, out))
    assert counts["resumed_shards"] == 2 and counts["encoded"] == 40
    assert _checksums(str(out)) == _checksums(str(reference[0]))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_folder_inputs_go_to_the_dead_letter_table(nets, tmp_path):
    images = load("cfmnist:iid?limit=6").images.transpose(0, 2, 3, 1)
    for i, image in enumerate(images):
        (tmp_path / "in" / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / f"class{i % 2}" / f"{i}.png").write_bytes(_png(image))
    (tmp_path / "in" / "class0" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "in" / "class1" / "small.png").write_bytes(_png(images[0][:28, :28]))
    (tmp_path / "in" / "loose.png").write_bytes(_png(images[0]))
    counts = run(_args(nets, tmp_path / "out", "--resize", "none", source=str(tmp_path / "in")))
    assert (counts["read"], counts["encoded"], counts["rejected"]) == (9, 6, 3)
    store = open_store(str(tmp_path / "out"))
    assert store.manifest.layout.label_names == ("class0", "class1")
    reasons = dict(zip(store.dead_letters()["id"], store.dead_letters()["reason"], strict=True))
    assert reasons["class0/corrupt.png"] == "not an image Pillow can read"
    assert "(3, 28, 28)" in reasons["class1/small.png"]
    assert reasons["loose.png"] == "missing label"
    assert sorted(store.index()["id"]) == sorted(f"class{i % 2}/{i}.png" for i in range(6))


def _encoded(image: np.ndarray, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _messy_folder(root, images):
    """A class folder as users have them: hidden files and folders, formats beyond PNG, no
    extension, 16-bit and EXIF-rotated images, a text file."""
    a, b = root / "a", root / "b"
    for folder in (a, b, root / ".ipynb_checkpoints" / "a", root / "b" / ".thumbs"):
        folder.mkdir(parents=True, exist_ok=True)
    (a / "0.png").write_bytes(_png(images[0]))
    (root / ".ipynb_checkpoints" / "a" / "0-checkpoint.png").write_bytes(_png(images[1]))
    (root / "b" / ".thumbs" / "t.png").write_bytes(_png(images[1]))
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (a / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata twin
    (a / "1.gif").write_bytes(_encoded(images[1], "GIF"))
    (a / "2.tif").write_bytes(_encoded(images[2], "TIFF"))
    (b / "3").write_bytes(_png(images[3]))  # a PNG without an extension
    gray16 = (images[4].mean(axis=2).round().astype(np.uint16) * 257).astype(np.uint16)
    (b / "4-16bit.png").write_bytes(_encoded(gray16, "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    upside_down = np.ascontiguousarray(images[5][::-1, ::-1])
    (b / "5-rotated.jpg").write_bytes(_encoded(upside_down, "JPEG", exif=exif, quality=100))
    (b / "notes.txt").write_text("not an image")
    return gray16


def test_every_file_of_a_folder_is_encoded_dead_lettered_or_skipped(nets, tmp_path):
    images = load("cfmnist:iid?limit=6").images.transpose(0, 2, 3, 1)
    gray16 = _messy_folder(tmp_path / "in", images)
    result = _encode_cli(*_args(nets, tmp_path / "out", source=str(tmp_path / "in")))
    assert result.returncode == 0, result.stderr[-2000:]
    # 11 files: 6 images, a text file, 4 hidden ones; the summary adds up to them
    assert "listed 11: encoded 6, rejected 1, skipped 4 hidden" in result.stdout, result.stdout
    store = open_store(str(tmp_path / "out"), full_check=True)
    # the store itself keeps the account and names every skipped input, with its reason
    accounting = store.manifest.accounting.to_dict()
    assert accounting == {"listed": 11, "encoded": 6, "rejected": 1, "skipped": 4}
    skipped = pq.read_table(tmp_path / "out" / "skipped.parquet").to_pylist()
    assert [(row["id"], row["reason"]) for row in skipped] == [
        (".ipynb_checkpoints/a/0-checkpoint.png", "skipped: inside hidden folder .ipynb_checkpoints/"),
        ("a/.DS_Store", "skipped: hidden file .DS_Store"),
        ("a/._0.png", "skipped: hidden file ._0.png"),
        ("b/.thumbs/t.png", "skipped: inside hidden folder .thumbs/"),
    ]  # fmt: skip
    assert all(row["source"].endswith(row["id"]) for row in skipped)
    info = subprocess.run([sys.executable, "-m", "cli.main", "store", "info", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert "inputs       listed 11: encoded 6, rejected 1, skipped 4 (skipped.parquet)" in (
        info.stdout
    ), info.stdout
    assert not (tmp_path / "out" / "screen").exists() or not any(
        (tmp_path / "out" / "screen").iterdir()
    )
    assert store.manifest.layout.label_names == ("a", "b")  # no class from a hidden folder
    assert store.dead_letters()[["id", "reason"]].values.tolist() == [
        ["b/notes.txt", "not an image Pillow can read"]
    ]
    stored = dict(zip(store.index()["id"], store.read_shard(0).images, strict=True))
    assert sorted(stored) == ["a/0.png", "a/1.gif", "a/2.tif", "b/3", "b/4-16bit.png",
                              "b/5-rotated.jpg"]  # fmt: skip
    np.testing.assert_array_equal(stored["a/2.tif"], images[2].transpose(2, 0, 1))
    np.testing.assert_array_equal(stored["b/3"], images[3].transpose(2, 0, 1))
    # 16 bits scaled to 8 (not clipped to white), every channel the grey value
    expected = np.rint(gray16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(stored["b/4-16bit.png"], np.stack([expected] * 3))
    # EXIF orientation applied: the stored image is the upright one (JPEG: close, not equal)
    upright = images[5].transpose(2, 0, 1).astype(int)
    assert np.abs(stored["b/5-rotated.jpg"].astype(int) - upright).mean() < 6
    assert np.abs(stored["b/5-rotated.jpg"].astype(int) - upright[:, ::-1, ::-1]).mean() > 12


def test_dead_letter_reasons_are_the_same_on_every_run(nets, tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "in" / "a" / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    images = load("cfmnist:iid?limit=1").images.transpose(0, 2, 3, 1)
    (tmp_path / "in" / "a" / "good.png").write_bytes(_png(images[0]))
    tables = []
    for attempt in range(2):
        run(_args(nets, tmp_path / f"out{attempt}", source=str(tmp_path / "in")))
        tables.append(open_store(str(tmp_path / f"out{attempt}")).dead_letters())
    assert tables[0].equals(tables[1]) and len(tables[0]) == 2
    assert not tables[0]["reason"].str.contains("0x").any()


def test_parquet_input_with_a_missing_label(nets, tmp_path):
    images = load("cfmnist:iid?limit=5")
    table = pa.table(
        {
            "id": [f"item-{i}" for i in range(5)],
            "image": [_png(im.transpose(1, 2, 0)) for im in images.images],
            "label": [int(x) for x in images.labels[:4]] + [None],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    counts = run(_args(nets, tmp_path / "out", source=str(tmp_path / "in.parquet")))
    assert (counts["encoded"], counts["rejected"]) == (4, 1)
    store = open_store(str(tmp_path / "out"))
    assert store.dead_letters()["reason"].tolist() == ["missing label"]
    np.testing.assert_array_equal(store.read_shard(0).images, images.images[:4])


def test_generator_and_output_in_an_s3_bucket(nets, reference):
    with moto_s3() as options:
        url = "s3://advmix/stores/cfm"
        fsspec.filesystem("s3", **options).put_file(str(nets[0]), "advmix/models/G.pt")
        flags = [
            f"--storage-option=endpoint_url={options['endpoint_url']}",
            "--generator=s3://advmix/models/G.pt",
        ]
        counts = run(_args(nets, url, *flags))
        assert counts["encoded"] == 40
        assert _checksums(url, storage_options=options) == _checksums(str(reference[0]))


def _encode_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.encode", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_prints_counts(nets, tmp_path):
    result = _encode_cli(*_args(nets, tmp_path / "cli", source="cfmnist:iid?limit=10"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "listed 10: encoded 10, rejected 0, skipped 0" in result.stdout


@pytest.mark.parametrize(
    "args, code, message",
    [
        (None, 2, "the following arguments are required"),
        (["--steps", "0"], 2, "must be >= 1"),
        (["--mix-steps", "-1"], 2, "must be >= 0"),
        (["--generator", "/nonexistent/G.pt"], 1, "Error:"),
        (["--input", "cfmnist:nope"], 1, "unknown split"),
        (["--features", "/nonexistent/F.pt"], 1, "cannot read perceptual weights"),
        (["--device", "tpu:0"], 1, "--device tpu:0: not a device"),
        (["--device", "cuda:64"], 1, "--device cuda:64"),
    ],
)
def test_bad_arguments_fail_cleanly(nets, tmp_path, args, code, message):
    argv = ["--input", SPEC] if args is None else _args(nets, tmp_path / "x") + args
    result = _encode_cli(*argv)
    assert result.returncode == code
    assert "Traceback" not in result.stderr and message in result.stderr
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_generator_settings_are_recorded(nets, reference):
    manifest = json.loads((reference[0] / "manifest.json").read_text())
    assert manifest["k"] == 4 and manifest["encoder"]["algorithm"] == "advmix-1"


def test_large_model_sharing_gives_the_same_store(nets, reference, tmp_path, monkeypatch):
    # The shared-model server leaves address/lock files in the temp dir.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    counts = run(_args(nets, tmp_path / "shared", "--large-model"))
    assert counts["encoded"] == 40
    assert _checksums(str(tmp_path / "shared")) == _checksums(str(reference[0]))


@pytest.fixture(scope="module")
def encoders(nets, tmp_path_factory):
    """Two tiny encoders for the test generator (different seeds) and one for another one."""
    from advmix.checkpoints import load_generator
    from advmix.perceptual import load_features
    from gan.encoder import EncoderTrainConfig, EncoderTrainer

    root = tmp_path_factory.mktemp("encoders")
    G, F = load_generator(nets[0]), load_features(str(nets[1]))
    paths = []
    for seed, generator in (
        (0, G),
        (1, G),
        (0, load_generator(tiny_generator(root / "G2.pt", seed=5))),
    ):
        cfg = EncoderTrainConfig(steps=2, batch=4, width=4, max_width=8, seed=seed)
        paths.append(
            EncoderTrainer(cfg, generator, F, root / f"run{len(paths)}").train(progress=False)
        )
    return paths


def test_encoder_init_is_recorded_and_never_mixes_with_another(nets, encoders, tmp_path):
    out = tmp_path / "store"
    counts = run(_args(nets, out, "--init", "encoder", "--encoder", str(encoders[0])))
    assert counts["encoded"] == 40
    from advmix.encoder import encoder_fingerprint, load_encoder

    recorded = open_store(str(out)).encoder
    assert recorded["init"] == "encoder"
    # the warm start's optimiser is part of the store's recipe (a mean-init store, the paper's
    # Adam, records none, as stores did before the setting existed)
    assert (recorded["lr"], recorded["betas"]) == (0.05, [0.5, 0.9])
    assert "mix_steps" not in recorded  # not asked for: Algorithm 1's mixing loss every step
    assert recorded["encoder_fingerprint"] == encoder_fingerprint(load_encoder(encoders[0])[0])
    # an unfinished store started with one encoder refuses another, before any work
    import shutil

    shutil.rmtree(tmp_path / "partial", ignore_errors=True)
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "manifest.json").unlink()
    result = _encode_cli(*_args(nets, partial, "--init", "encoder", "--encoder", str(encoders[1])))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "started with other settings (encoder.encoder_fingerprint)" in result.stderr
    assert "inverted" not in result.stderr


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--init", "encoder"], 2, "--init encoder and --encoder E.pt go together"),
        (["--encoder", "ENC0"], 2, "--init encoder and --encoder E.pt go together"),
        (["--init", "encoder", "--encoder", "ENC2"], 1, "was trained for generator"),
        (["--init", "encoder", "--encoder", "TEXT"], 1, "not a readable encoder checkpoint"),
    ],
)
def test_bad_encoder_arguments_are_one_line(nets, encoders, tmp_path, extra, code, message):
    text = tmp_path / "notes.txt"
    text.write_text("not an encoder")
    names = {"ENC0": str(encoders[0]), "ENC2": str(encoders[2]), "TEXT": str(text)}
    result = _encode_cli(*_args(nets, tmp_path / "x"), *[names.get(a, a) for a in extra])
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_an_encoder_serves_generators_fine_tuned_from_its_own(nets, encoders, tmp_path):
    """A generator fine-tuned (``gan train --init-from``) from the encoder's generator records
    that start; the encoder is accepted for it, and for no other generator."""
    import torch

    from advmix.checkpoints import save_generator
    from gan.train import GANTrainConfig, fine_tuning

    G = load_generator(nets[0])
    cfg = fine_tuning(GANTrainConfig(), str(nets[0]))
    with torch.no_grad():
        next(G.parameters()).add_(0.01)  # a fine-tuned copy: other weights, other fingerprint
    tuned = tmp_path / "tuned.pt"
    save_generator(G, tuned, {"train_config": cfg.to_dict()})
    args = _args((tuned, nets[1]), tmp_path / "store", "--init", "encoder", "--encoder",
                 str(encoders[0]))  # fmt: skip
    assert run(args)["encoded"] == 40
    refused = _encode_cli(*_args((tuned, nets[1]), tmp_path / "x", "--init", "encoder",
                                 "--encoder", str(encoders[2])))  # fmt: skip
    assert refused.returncode == 1 and "was trained for generator" in refused.stderr

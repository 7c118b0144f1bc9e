"""Imported StyleGAN2 generators reproduce the reference implementations, and foreign pickles
are read as data, never run.

The fixtures in tests/fixtures/stylegan2 are numbers only: random-initialised generators built
with NVlabs/stylegan2-ada-pytorch (d72cc7d) and rosinality/stylegan2-pytorch (bef283a) on a
CPU (non-default widths, non-zero biases, noise strengths and w_avg; the 64 px NVlabs one with
two fp16 blocks and conv_clamp 0.5, which clamps in every layer), their weights, and the
outputs of the reference code: mapped and truncated w, images with const and no noise, and
style mixes at crossovers 1, 3 and 5. The NVlabs pickles are written by the tests themselves.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from snapshot_writer import globals_of, snapshot_pickle

from advmix.checkpoints import CheckpointError, generator_fingerprint, load_generator
from advmix.exporters import ExportError, nvlabs_layout
from advmix.importers import import_generator
from advmix.stylegan import Generator, GeneratorConfig
from cli.main import main

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan2"
TOLERANCE = 1e-4  # max abs difference, fp32 on the CPU (measured: under 1e-5)


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def trap(path: Path) -> str:
    """Module source that leaves a file behind if anything ever runs it."""
    return f"import pathlib\npathlib.Path({str(path)!r}).write_text('the embedded source ran')\n"


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs().max().item()
    assert diff <= TOLERANCE, diff
    return diff


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["nvlabs-32", "nvlabs-64-fp16-clamp"])
@pytest.mark.parametrize("protocol", [3, 4])
def test_nvlabs_pickles_reproduce_the_reference(tmp_path, name, protocol):
    ref = fixture(name)
    raw = snapshot_pickle(ref["state_dict"], json.loads(ref["init_kwargs"]),
                          trap(tmp_path / "ran"), protocol=protocol)  # fmt: skip
    expected = {"torch_utils.persistence._reconstruct_persistent_obj", "dnnlib.util.EasyDict",
                "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.storage._load_from_bytes", "collections.OrderedDict"}  # fmt: skip
    assert expected <= globals_of(raw)  # the structure of a real snapshot
    (tmp_path / "snapshot.pkl").write_bytes(raw)
    G = import_generator(tmp_path / "snapshot.pkl").generator
    assert not (tmp_path / "ran").exists()  # imported as data: the embedded source never ran
    z, ws = ref["z"], ref["ws"]
    with torch.no_grad():
        assert torch.equal(G.mapping(z), ws)
        close(G.mapping(z, truncation_psi=0.7), ref["ws_trunc"])
        close(G.mapping(z, truncation_psi=0.7, truncation_cutoff=3), ref["ws_trunc_cutoff"])
        close(G.synthesis(ws, noise_mode="const"), ref["img_const"])
        close(G.synthesis(ws, noise_mode="none"), ref["img_none"])
        half = len(z) // 2
        for c in ref["mix_crossovers"]:
            mixed = torch.cat([ws[:half, :c], ws[half:, c:]], dim=1)  # toRGB shares conv0's row
            close(G.synthesis(mixed), ref[f"img_mix_{c}"])
    styles = ws.clone().requires_grad_(True)  # inversion and attacks differentiate through it
    G.synthesis(styles).square().mean().backward()
    assert torch.isfinite(styles.grad).all() and styles.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["rosinality-32", "rosinality-64"])
def test_rosinality_checkpoints_reproduce_the_reference(tmp_path, name):
    ref = fixture(name)
    path = tmp_path / "g.pt"
    torch.save({"g_ema": ref["g_ema"], "latent_avg": ref["latent_avg"]}, path)
    G = import_generator(path).generator
    assert G.cfg.widths == tuple(
        ref["args"]["channels"][r] for r in sorted(ref["args"]["channels"])
    )
    assert torch.equal(G.w_avg, ref["latent_avg"])
    with torch.no_grad():
        ws = G.mapping(ref["z"])
        close(ws[:, 0], ref["ws"])
        close(G.synthesis(ws), ref["img_const"])
        close(G.synthesis(G.mapping(ref["z"], truncation_psi=ref["truncation"])), ref["img_trunc"])
        w_a, w_b = G.mapping(ref["z_a"]), G.mapping(ref["z_b"])
        for c in ref["mix_crossovers"]:  # rosinality's inject_index=c
            close(G.synthesis(torch.cat([w_a[:, :c], w_b[:, c:]], dim=1)), ref[f"img_mix_{c}"])


def test_a_rosinality_training_checkpoint_with_argparse_args(tmp_path):
    import argparse

    ref = fixture("rosinality-32")
    args = argparse.Namespace(size=32, n_sample=64, lr=0.002, path="lmdb/faces")
    torch.save({"g": ref["g_ema"], "d": {}, "g_ema": ref["g_ema"], "args": args,
                "latent_avg": ref["latent_avg"]}, tmp_path / "100000.pt")  # fmt: skip
    imported = import_generator(tmp_path / "100000.pt", "rosinality")
    assert imported.info["args"]["path"] == "lmdb/faces"


def test_the_cli_imports_prints_and_writes_a_checkpoint_the_loader_reads(tmp_path, capsys):
    ref = fixture("nvlabs-64-fp16-clamp")
    src = tmp_path / "network-snapshot-000100.pkl"
    src.write_bytes(snapshot_pickle(ref["state_dict"], json.loads(ref["init_kwargs"]),
                                    trap(tmp_path / "ran")))  # fmt: skip
    main(["gan", "import", str(src), "--out", str(tmp_path / "G.pt"), "--k", "6"])
    out = capsys.readouterr().out
    assert "StyleGAN2 64x64x3, z_dim 64, w_dim 64, num_ws 10, mapping layers 2" in out
    assert "widths {4:32, 8:32, 16:32, 32:32, 64:16}, conv_clamp 0.5" in out
    G = load_generator(tmp_path / "G.pt")
    assert G.cfg.k == 6 and G.cfg.resample == "fir"
    from advmix.checkpoints import read_generator_checkpoint

    extra = read_generator_checkpoint(tmp_path / "G.pt")["extra"]["imported"]
    assert extra["format"] == "nvlabs" and len(extra["sha256"]) == 64
    with torch.no_grad():
        close(G.synthesis(ref["ws"]), ref["img_const"])
    assert not (tmp_path / "ran").exists()


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_anything_else_is_refused_naming_the_global(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _Payload(tmp_path / "pwned")}))
    with pytest.raises(CheckpointError, match=r"refused global (posix|os|nt)\.system"):
        import_generator(evil, "nvlabs")
    assert not (tmp_path / "pwned").exists()


def test_stylegan3_and_unknown_files_get_one_line(tmp_path):
    ref = fixture("nvlabs-32")
    sg3 = {**ref["state_dict"], "synthesis.input.freqs": torch.zeros(4, 2)}
    (tmp_path / "sg3.pkl").write_bytes(snapshot_pickle(sg3, json.loads(ref["init_kwargs"]), "#"))
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        import_generator(tmp_path / "sg3.pkl")
    (tmp_path / "notes.txt").write_text("not a network")
    with pytest.raises(CheckpointError, match="not an NVlabs StyleGAN2 pickle"):
        import_generator(tmp_path / "notes.txt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no g_ema state dict; supported: StyleGAN2"):
        import_generator(tmp_path / "other.pt")


@pytest.mark.parametrize("name", ["nvlabs-32", "nvlabs-64-fp16-clamp", "rosinality-32",
                                  "rosinality-64"])  # fmt: skip
def test_the_wrong_format_is_one_line_without_warnings_or_unsafe_advice(tmp_path, name):
    ref = fixture(name)
    if name.startswith("nvlabs"):
        src, wrong, says = tmp_path / "network-snapshot.pkl", "rosinality", "not a rosinality"
        src.write_bytes(snapshot_pickle(ref["state_dict"], json.loads(ref["init_kwargs"]),
                                        trap(tmp_path / "ran")))  # fmt: skip
    else:
        src, wrong, says = tmp_path / "g.pt", "nvlabs", "not an NVlabs StyleGAN2 pickle"
        torch.save({"g_ema": ref["g_ema"], "latent_avg": ref["latent_avg"]}, src)
    result = subprocess.run(
        [sys.executable, "-m", "cli", "gan", "import", str(src), "--format", wrong,
         "--out", str(tmp_path / "G.pt")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1 and output.count("\n") == 1, output
    assert output.startswith(f"Error: {src}: {says}") and "supported: StyleGAN2" in output
    for unwanted in ("weights_only", "Traceback", "Warning"):
        assert unwanted not in output
    assert not (tmp_path / "G.pt").exists() and not (tmp_path / "ran").exists()


def test_evaluate_grids_of_an_imported_64px_generator(tmp_path, capsys):
    """Choosing k by eye: a sample grid and a mixing grid for every k, in 64 px cells."""
    ref = fixture("nvlabs-64-fp16-clamp")
    src = tmp_path / "network-snapshot.pkl"
    src.write_bytes(snapshot_pickle(ref["state_dict"], json.loads(ref["init_kwargs"]),
                                    trap(tmp_path / "ran")))  # fmt: skip
    main(["gan", "import", str(src), "--out", str(tmp_path / "G.pt")])
    capsys.readouterr()
    main(["gan", "evaluate", "--generator", str(tmp_path / "G.pt"), "--grids",
          str(tmp_path / "grids")])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    names = ["samples.png"] + [f"mixing-k{k}.png" for k in range(1, 10)]  # num_ws 10
    assert result["grids"] == [str(tmp_path / "grids" / name) for name in names]
    assert "not measured" in result["metrics"]
    # one-pixel borders around 64 px cells: 8 x 8 samples, 7 x 7 mixing cells (with sources)
    sizes = {name: 8 * 65 + 1 if name == "samples.png" else 7 * 65 + 1 for name in names}
    pixels = {}
    for name in names:
        image = Image.open(tmp_path / "grids" / name)
        assert image.size == (sizes[name], sizes[name]) and image.mode == "RGB"
        pixels[name] = np.asarray(image, dtype=np.float32)
        assert pixels[name].std() > 10  # images, not a blank canvas
    assert np.abs(pixels["mixing-k1.png"] - pixels["mixing-k9.png"]).mean() > 1  # k matters


def test_the_projects_own_checkpoints_keep_their_fingerprints():
    G = load_generator(Path(__file__).parents[1] / "advmix" / "assets" / "cfmnist-G.pt")
    # the fingerprint the shipped generator has always had (stores record it)
    assert generator_fingerprint(G) == (
        "1db9d1e601acd1ae0ad800bd628c6f961e6a17df03199b7533b6062d29de12ab"
    )
    assert "resample" not in G.cfg.to_dict() and G.cfg.resample == "bilinear"


def test_an_imported_64px_generator_through_both_stages(tmp_path, capsys):
    """The Beam job encodes 64 px images with an imported generator, AdvMix trains an epoch
    from that store, and evaluation attacks it with the user's k."""
    from tiny_nets import tiny_features

    from advmix.datasets import load
    from pipeline.encode import run as encode
    from schemas.reader import open_store

    ref = fixture("rosinality-64")
    torch.save({"g_ema": ref["g_ema"], "latent_avg": ref["latent_avg"]}, tmp_path / "g.pt")
    main(["gan", "import", str(tmp_path / "g.pt"), "--out", str(tmp_path / "G.pt"), "--k", "4"])
    data = load("cfmnist:iid?limit=16")
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = tmp_path / "faces" / f"class{label % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(image.transpose(1, 2, 0)).resize((64, 64), Image.NEAREST)
        big.save(folder / f"{i}.png")
    counts = encode([
        "--input", str(tmp_path / "faces"), "--output", str(tmp_path / "store"),
        "--generator", str(tmp_path / "G.pt"), "--features", str(tiny_features(tmp_path / "F.pt")),
        "--steps", "1", "--batch-size", "8", "--shard-size", "8", "--w-avg-samples", "16",
    ])  # fmt: skip
    assert counts["encoded"] == 16
    store = open_store(str(tmp_path / "store"))
    G = load_generator(tmp_path / "G.pt")
    assert store.generator_fingerprint == generator_fingerprint(G) and store.k == 4
    assert store.image_shape == (3, 64, 64) and store.num_ws == 10
    capsys.readouterr()
    main(["train", "--store", str(tmp_path / "store"), "--generator", str(tmp_path / "G.pt"),
          "--method", "advmix", "--epochs", "1", "--batch-size", "8", "--width", "4",
          "--attack-steps", "1", "--style-samples", "64", "--out", str(tmp_path / "run"),
          "--no-progress"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and np.isfinite(summary["loss"])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["k"] == 4 and record["generator"]["fingerprint"] == generator_fingerprint(G)
    main(["evaluate", "--checkpoint", str(tmp_path / "run" / "classifier.pt"), "--store",
          str(tmp_path / "store"), "--attack", "advmix", "--generator", str(tmp_path / "G.pt"),
          "--k", "6", "--attack-steps", "1", "--style-samples", "64",
          "--json-out", str(tmp_path / "eval.json")])  # fmt: skip
    row = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    assert row["budget"]["k"] == 6 and row["n"] == 16


@pytest.mark.parametrize("name", ["nvlabs-32", "nvlabs-64-fp16-clamp"])
def test_an_imported_generator_exports_back_to_the_nvlabs_tensors(tmp_path, name):
    """NVlabs' tools (its projector, its metrics) can run a generator the project holds: the
    export gives back every tensor the snapshot had, under its name, and constructor
    arguments that build the same network (fp16 layers run in fp32, as imported)."""
    ref = fixture(name)
    kwargs = json.loads(ref["init_kwargs"])
    (tmp_path / "snapshot.pkl").write_bytes(snapshot_pickle(ref["state_dict"], kwargs, "#"))
    init_kwargs, state = nvlabs_layout(import_generator(tmp_path / "snapshot.pkl").generator)
    assert sorted(state) == sorted(ref["state_dict"])
    for key, value in ref["state_dict"].items():
        assert torch.equal(state[key], value.float()), key
    # the snapshot's own arguments, bar fp16 (its fp16 layers run in fp32 here, and so there)
    kwargs["synthesis_kwargs"]["num_fp16_res"] = 0
    for key, value in kwargs.items():
        if key.endswith("_kwargs"):
            assert value.items() <= init_kwargs[key].items()
        else:
            assert init_kwargs[key] == value


def test_a_bilinear_generator_is_refused_for_export():
    G = Generator(GeneratorConfig(resolution=8, channel_base=64, channel_max=16, z_dim=8, w_dim=8))
    with pytest.raises(ExportError, match="FIR filter; this one is 'bilinear'"):
        nvlabs_layout(G)

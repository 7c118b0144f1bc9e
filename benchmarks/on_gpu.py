"""Every check and figure that needs a CUDA device, in one command for a short GPU lease.

    python -m benchmarks.on_gpu --out DIR [--only tests,attack_cost,encode,quality]
    python -m benchmarks.on_gpu --out DIR --device cpu --smoke   # rehearse it here first

Sections, each independent (one failing does not stop the others); ``DIR/summary.json`` is
rewritten as each one ends, so a run cut short keeps what it finished:

- ``tests``: ``tests/test_cuda.py`` (the CUDA paths of inversion, synthesis, the Beam job and
  training), which CI skips for want of a GPU.
- ``attack_cost``: one AdvMix epoch (K=5, early stop on and off) vs one nominal epoch
  (``bench_training.measure_attack_cost``) on the GPU, at two batch sizes.
- ``encode``: Algorithm 1 per image vs batched vs the Beam job (``bench_encode.run``), sized
  so the Beam job's fixed start-up is not the whole measurement.
- ``quality``: 512 real test images encoded by the Beam job on the GPU with the shipped
  generator at several step counts, each judged by ``advmix store report``'s metrics.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

QUALITY_STEPS = (100, 200, 400)
QUALITY_SPEC = "cfmnist:iid?limit=512"


def tests(out: Path, device: str, smoke: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    (out / "tests.log").write_text(result.stdout + result.stderr)
    return {"returncode": result.returncode, "summary": result.stdout.strip().splitlines()[-1:]}


def attack_cost(out: Path, device: str, smoke: bool) -> dict:
    from benchmarks.bench_training import measure_attack_cost

    samples = 256 if smoke else 4096
    return {
        f"batch_{batch}": measure_attack_cost(samples, batch, device, repeats=2)
        for batch in (64, 256)
    }


def encode(out: Path, device: str, smoke: bool) -> dict:
    from benchmarks.bench_encode import GPU, run

    sizes = {"num_images": 16, "steps": 2, "batch": 8} if smoke else GPU
    return run(device=device, split="iid", **sizes)


def quality(out: Path, device: str, smoke: bool) -> dict:
    import torch

    from advmix import shipped
    from advmix.checkpoints import load_generator
    from advmix.classifiers import load_classifier
    from pipeline.encode import run as encode_job
    from schemas.reader import open_store
    from training.store_quality import encoding_report, save_grid

    generator = shipped.GENERATOR
    G = load_generator(generator)
    classifier, _ = load_classifier(shipped.GRAY_CLASSIFIER)
    results = {}
    scratch = Path(tempfile.mkdtemp(prefix="advmix-quality-"))  # stores stay off DIR
    for steps in (2,) if smoke else QUALITY_STEPS:
        store = scratch / f"store-{steps}"
        started = time.perf_counter()
        counts = encode_job(
            ["--input", "cfmnist:iid?limit=16" if smoke else QUALITY_SPEC, "--output", str(store), "--generator", str(generator),
             "--steps", str(steps), "--batch-size", "128", "--shard-size", "128",
             "--device", device]
        )  # fmt: skip
        wall = time.perf_counter() - started
        with torch.no_grad():
            metrics, rows = encoding_report(open_store(str(store)), G, classifier, 512)
        save_grid(rows, out / f"encode-quality-{steps}.png")
        results[f"steps_{steps}"] = {"job_wall_s": round(wall, 1), "counts": counts, **metrics}
    return results


def official(out: Path, device: str, smoke: bool) -> dict:
    """Synthesis and one inversion step per image with the official configs' architecture."""
    from benchmarks.bench_official import measure

    sizes = (256,) if smoke else (256, 1024)
    return {f"{r}px": measure(r, device, batch=2 if smoke else 8) for r in sizes}


SECTIONS = {
    "tests": tests,
    "attack_cost": attack_cost,
    "encode": encode,
    "quality": quality,
    "official": official,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run on a GPU machine, or rehearse with --device cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    device = {"name": name, "torch": torch.__version__, "python": sys.version.split()[0]}
    print(json.dumps(device), flush=True)
    summary = {"device": device}
    for name in args.only.split(","):
        started = time.perf_counter()
        try:
            result = SECTIONS[name](args.out, args.device, args.smoke)
        except Exception as exc:  # a broken section must not cost the others their lease time
            result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        result["section_wall_s"] = round(time.perf_counter() - started, 1)
        summary[name] = result
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"== {name}\n{json.dumps(result, indent=2)}", flush=True)


if __name__ == "__main__":
    main()

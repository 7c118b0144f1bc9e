"""What a training run keeps in its directory, and the rules for resuming it.

A run directory holds ``checkpoint.pt`` (written atomically: model, optimiser, the global RNG
states as tensors and plain lists, every rank's stream state), ``metrics.jsonl`` and
``tensorboard/``, ``grid-epochNNNN.png``, ``classifier.pt`` and ``run.json`` (config,
command line with credentials masked, store and generator fingerprints, versions, git SHA).
Everything is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from advmix.checkpoints import CheckpointError, atomic_save, safe_load
from advmix.errors import AdvmixError
from advmix.settings import fixed_names
from training.config import TrainConfig

CHECKPOINT_FORMAT = "advmix-train-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the classifier's weights without the old wrapper's "net." prefix


# ----------------------------------------------------------------------------------------------
# RNG state as tensors and plain types (torch.load weights_only=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Checkpoints and resume


def model_weights(data: dict) -> dict:
    """The classifier's state dict from a checkpoint of any version."""
    weights = data["model"]
    if data.get("version", 1) == 1:  # the classifier sat inside a wrapper module as "net"
        weights = {key.removeprefix("net."): value for key, value in weights.items()}
    return weights


def read_checkpoint(path: Path) -> dict:
    data = safe_load(path, what="training checkpoint")
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an advmix training checkpoint")
    return data


def check_resumable(data: dict, cfg: TrainConfig, fingerprint: str, world_size: int, run_dir):
    """Refuse, with the settings named, to resume a run under different settings."""
    saved, mine = json.loads(data["config"]), cfg.to_dict()
    # A setting the run did not record was at its default then; compare the recorded ones.
    changed = [k for k in fixed_names(TrainConfig) if k in saved and saved[k] != mine.get(k)]
    if changed:
        raise AdvmixError(
            f"cannot resume {run_dir}: settings differ from the run's "
            f"({', '.join(f'{k}: {saved.get(k)!r} -> {mine.get(k)!r}' for k in changed)})"
        )
    if data["generator_fingerprint"] != fingerprint:
        raise AdvmixError(f"cannot resume {run_dir}: it was trained with another generator")
    if len(data["stream"]) != world_size:
        raise AdvmixError(
            f"cannot resume {run_dir}: it ran on {len(data['stream'])} processes, now {world_size}"
        )


def write_checkpoint(payload: dict, path: Path) -> None:
    atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, path)


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines an interrupted run logged after its last checkpoint."""
    if path.exists():
        lines = path.read_text().splitlines()
        keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------------------------
# Run record


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("advmix", "torch", "torchvision", "numpy", "zarr", "pyarrow", "fsspec", "click"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_sha(here: Path = Path(__file__).resolve().parent) -> str | None:
    """The commit the code in ``here`` came from, with ``+modified`` when tracked files differ
    from it (the commit alone would then claim code that did not run)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                 timeout=10)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return None
    return sha + "+modified" if git("status", "--porcelain", "--untracked-files=no") else sha


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with storage-option values masked (they may hold credentials)."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append(arg.split("=", 1)[0] + "=***")
            hide = False
        elif arg.startswith("--storage-option="):
            out.append("--storage-option=" + arg.split("=", 2)[1] + "=***")
        else:
            out.append(arg)
            hide = arg == "--storage-option"
    return out


def store_fingerprint(store) -> str:
    """sha256 of the store's manifest (it lists every object's sha256)."""
    from schemas.layout import MANIFEST

    return hashlib.sha256(store.location.read(MANIFEST)).hexdigest()


def write_json_atomic(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)

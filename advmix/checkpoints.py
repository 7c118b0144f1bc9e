"""Checkpoint files: atomic writes, safe reads, content fingerprints, and generator files.

Every file the project writes is one ``torch.save`` of plain containers, strings and tensors,
written to a temporary name and renamed, so a reader never sees half a file. Every file it
reads goes through ``torch.load(..., weights_only=True)``: a pickle that would build any other
object (and so could run code) is refused with one line naming what it met.

A generator file holds the architecture (``GeneratorConfig`` as JSON), the weights and their
fingerprint: a sha256 over the config and every tensor's name, dtype, shape and bytes, which
stores and training runs record to refuse latents decoded by another generator.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from advmix.errors import AdvmixError
from advmix.stylegan import Generator, GeneratorConfig

GENERATOR_FORMAT = "advmix-stylegan2-generator"
GENERATOR_VERSION = 1


class CheckpointError(AdvmixError):
    """A checkpoint that is missing, unsafe, corrupt or of the wrong kind."""


def atomic_save(obj, path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def weights_only_load(source, map_location="cpu"):
    """``torch.load(weights_only=True)`` of a path or file object, without torch's warning about
    a file's pickle protocol: a file it cannot read is refused with one line by the caller."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(source, map_location=map_location, weights_only=True)


# What torch's weights-only unpickler met, without the advice around it.
_UNPICKLER_DETAIL = re.compile(
    r"WeightsUnpickler error:\s*(.+?)(?:\.\s+Please use|\n\s*\n|$)", re.S
)
# Sentences of torch's messages that tell the user to load unsafely or to allow-list classes.
_ADVICE = (
    "weights_only",
    "weights only",
    "trust",
    "file an issue",
    "documentation",
    "safe_globals",
)


def load_failure_reason(exc: BaseException) -> str:
    """Why a load failed, as a short phrase for a one-line error. torch's own messages advise
    re-running with ``weights_only=False`` (which can run a file's code): that is never echoed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of its advice
    found = _UNPICKLER_DETAIL.search(text)
    if found:
        return " ".join(found.group(1).split()).rstrip(".")[:200]
    sentences = (" ".join(s.split()) for s in re.split(r"(?<=\.)\s+|\n", text))
    detail = next((s for s in sentences if s and not any(a in s.lower() for a in _ADVICE)), "")
    detail = detail.rstrip(".")[:160]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def safe_load(path, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(weights_only=True)`` with one-line errors for missing or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return weights_only_load(path, map_location=map_location)
    except Exception as exc:  # unsafe, text, truncated or foreign: whatever the parser tripped on
        reason = load_failure_reason(exc)
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in reason:
            raise CheckpointError(
                f"{path}: refused to load {what}: it contains code or objects other than tensors "
                f"and plain containers ({reason})"
            ) from None
        raise CheckpointError(f"{path}: not a readable {what} ({reason})") from None


def state_fingerprint(config_json: str, state: dict[str, Tensor]) -> str:
    """sha256 over a config string and every tensor (name, dtype, shape, bytes) in key order."""
    h = hashlib.sha256()
    h.update(config_json.encode())
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"\n{key}|{str(t.dtype)}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def generator_fingerprint(G: Generator) -> str:
    return state_fingerprint(G.cfg.to_json(), G.state_dict())


def save_generator(G: Generator, path, extra: dict | None = None) -> str:
    """Write config + weights (tensors only) atomically; returns the content fingerprint.

    ``extra`` is stored as JSON (training settings, metrics) and must be JSON-serialisable.
    """
    state = {k: v.detach().to("cpu").clone() for k, v in G.state_dict().items()}
    fingerprint = state_fingerprint(G.cfg.to_json(), state)
    payload = {
        "format": GENERATOR_FORMAT,
        "version": GENERATOR_VERSION,
        "config": G.cfg.to_json(),
        "state_dict": state,
        "fingerprint": fingerprint,
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    atomic_save(payload, path)
    return fingerprint


def read_generator_checkpoint(path, map_location="cpu") -> dict:
    """The raw checkpoint dict (validated), with ``config`` parsed and ``extra`` decoded."""
    data = safe_load(path, map_location=map_location, what="generator checkpoint")
    if not isinstance(data, dict) or data.get("format") != GENERATOR_FORMAT:
        raise CheckpointError(f"{path}: not an advmix generator checkpoint")
    if data.get("version") != GENERATOR_VERSION:
        raise CheckpointError(
            f"{path}: generator checkpoint version {data.get('version')!r} is not supported "
            f"(expected {GENERATOR_VERSION})"
        )
    try:
        cfg = GeneratorConfig.from_dict(json.loads(data["config"]))
        extra = json.loads(data.get("extra", "{}"))
        state = data["state_dict"]
        assert isinstance(state, dict)
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"{path}: malformed generator checkpoint ({exc})") from None
    return {
        "config": cfg,
        "state_dict": state,
        "extra": extra,
        "fingerprint": data.get("fingerprint"),
    }


def fine_tuned_from(path) -> str | None:
    """The fingerprint of the generator the one at ``path`` was fine-tuned from (``advmix gan
    train --init-from`` records it), or None."""
    extra = read_generator_checkpoint(path)["extra"]
    return (extra.get("train_config") or {}).get("init_fingerprint")


def load_generator(path, map_location="cpu") -> Generator:
    """Rebuild a Generator from a checkpoint written by ``save_generator`` (eval mode)."""
    data = read_generator_checkpoint(path, map_location=map_location)
    G = Generator(data["config"])
    try:
        G.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: weights do not match the stored config ({' '.join(first[:2])[:200]})"
        ) from None
    stored = data["fingerprint"]
    if stored is not None and stored != generator_fingerprint(G):
        raise CheckpointError(f"{path}: fingerprint mismatch, the file is corrupt")
    G.to(map_location)
    return G.eval().requires_grad_(False)

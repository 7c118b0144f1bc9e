"""``advmix evaluate``: accuracy on dataset splits and robust accuracy under AdvMix on a store.

Robust accuracy under an attack of a stated budget (``steps`` K, ``restarts`` N_r,
``step_size``, projection set) is the fraction of store samples for which none of the
N_r * (K + 1) decoded mixes the attack tries is misclassified; ``worst_case_acc``
additionally requires the nominal (source) image to be classified correctly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from advmix import attacks
from advmix.attacks import AdvMixConfig
from advmix.checkpoints import CheckpointError, generator_fingerprint, load_generator, safe_load
from advmix.classifiers import CLASSIFIER_FORMAT, load_classifier, restore_classifier
from advmix.errors import AdvmixError
from advmix.projections import fit_style_set
from advmix.stylegan import resolve_k, to_unit
from training import runfiles
from training.targets import resolve_targets
from training.train import images_to_unit


def load_model(path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(classifier in eval mode, info) from a training checkpoint or a ``classifier.pt``."""
    data = safe_load(path, what="classifier checkpoint")
    if isinstance(data, dict) and data.get("format") == CLASSIFIER_FORMAT:
        return load_classifier(path, device)
    if not isinstance(data, dict) or data.get("format") != runfiles.CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: neither a training checkpoint nor a classifier file")
    try:
        config, weights = data["classifier_config"], runfiles.model_weights(data)
        info = {"config": json.loads(data["config"]), "step": data["step"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed classifier checkpoint ({exc!r})") from None
    return restore_classifier(config, weights, path).to(device).eval(), info


@torch.no_grad()
def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int, device) -> float:
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = images_to_unit(torch.from_numpy(images[i : i + batch_size]).to(device))
        y = torch.from_numpy(labels[i : i + batch_size]).to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(labels), 1)


def evaluate_datasets(model, specs, batch_size: int, device, data_root=None) -> list[dict]:
    from advmix.datasets import load

    model = model.for_inference()
    rows = []
    for spec in specs:
        data = load(spec, data_root)
        acc = accuracy(model, data.images, data.labels, batch_size, device)
        rows.append({"data": str(spec), "n": len(data), "accuracy": acc})
    return rows


def fooled_by_advmix(model, G, w, y, k, style_set, cfg: AdvMixConfig, gen, objective) -> tuple:
    """(which examples a mix fools, per-target correctness on the kept mixes, mixes tried)."""
    result = attacks.advmix(model, G, w, y, k, style_set, cfg, gen, objective)
    with torch.no_grad():
        kept = objective.correct(model(result.images), y)
    return result.fooled, kept, result.evaluations


def fooled_by_randmix(model, G, w, y, k, style_set, cfg: AdvMixConfig, gen, objective) -> tuple:
    """A RandMix attack: ``cfg.restarts`` random fine styles per example, no ascent."""
    fooled = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    kept = None
    for _ in range(cfg.restarts):
        images, _ = attacks.randmix(G, w, k, gen)
        with torch.no_grad():
            logits = model(images)
        fooled |= objective.wrong(logits, y)
        correct = objective.correct(logits, y)
        kept = correct if kept is None else kept & correct
    return fooled, kept, len(y) * cfg.restarts


# Attacks ``advmix evaluate --attack`` knows: (model, G, w, y, k, style set, config, generator,
# objective) -> (which examples some tried mix fools, per-target correct under the attack,
# mixes decoded).
ATTACKS = {"advmix": fooled_by_advmix, "randmix": fooled_by_randmix}


def budget(attack: str, cfg: AdvMixConfig, k: int) -> dict:
    ascends = attack == "advmix"
    return {
        "steps": cfg.steps if ascends else 0,
        "restarts": cfg.restarts,
        "step_size": cfg.step_size if ascends else None,
        "projection": cfg.projection if ascends else None,
        "k": k,
    }


def evaluate_store(
    model,
    url: str,
    storage_options: dict | None,
    *,
    attack: str,
    generator_path: str | None,
    cfg: AdvMixConfig,
    k: int | None = None,
    seed: int,
    batch_size: int,
    limit: int | None,
    device,
) -> dict:
    """Nominal accuracy on the store's images and robust accuracy under ``attack``, overall
    and per target (the classifier's attributes, or its classes)."""
    from schemas.reader import open_store
    from training.stream import LatentStream

    G = fp = None
    if generator_path is not None:
        G = load_generator(generator_path)
        fp = generator_fingerprint(G)
        G = G.to(device)
    elif attack != "none":
        raise AdvmixError(f"--attack {attack} needs --generator (mixes are decoded with it)")
    store = open_store(url, storage_options, expect_generator=fp)
    targets = resolve_targets(model.cfg.targets, store, num_classes=model.cfg.num_classes)
    objective = targets.objective
    attack_fn = ATTACKS.get(attack)
    style_set = None
    if attack_fn is not None:
        k = resolve_k(G, k, store.k)
        style_set = fit_style_set(G, k, cfg, seed=seed).to(device)
    stream = LatentStream(store, batch_size=batch_size, shuffle=False, buffer_size=0)
    gen = torch.Generator().manual_seed(seed)
    n = nominal = robust = worst = evaluations = 0
    per_target = torch.zeros(2, len(targets.labels), dtype=torch.long)  # nominal, robust
    started = time.perf_counter()
    for batch in stream.loader():
        if limit is not None and n >= limit:
            break
        take = len(batch["label"]) if limit is None else min(len(batch["label"]), limit - n)
        w = batch["w"][:take].to(device)
        y = targets.of(batch)[:take].to(device)
        with torch.no_grad():
            if "image" in batch:
                x = images_to_unit(batch["image"][:take].to(device))
            elif G is not None:
                x = to_unit(G.synthesis(w))
            else:
                raise AdvmixError(f"{store.url} holds no images: pass --generator to decode w")
            logits = model(x)
        ok, correct = ~objective.wrong(logits, y), objective.correct(logits, y)
        fooled, kept = torch.zeros_like(ok), correct
        if attack_fn is not None:
            fooled, kept, tried = attack_fn(model, G, w, y, k, style_set, cfg, gen, objective)
            evaluations += tried
        n += take
        nominal += int(ok.sum())
        robust += int((~fooled).sum())
        worst += int((ok & ~fooled).sum())
        per_target += torch.stack([correct.sum(0), kept.sum(0)]).cpu()
    out = {
        "data": store.url,
        "n": n,
        "accuracy": nominal / max(n, 1),
        "attack": attack,
        "wall_s": round(time.perf_counter() - started, 2),
        "per_target": {
            name: {"accuracy": int(per_target[0, i]) / max(n, 1),
                   **({"robust_accuracy": int(per_target[1, i]) / max(n, 1)}
                      if attack_fn is not None else {})}
            for i, name in enumerate(targets.labels)
        },
    }  # fmt: skip
    if attack_fn is not None:
        out.update(
            robust_accuracy=robust / max(n, 1),
            worst_case_accuracy=worst / max(n, 1),
            budget=budget(attack, cfg, k),
            evaluations=evaluations,
        )
    return out


def format_table(rows: list[dict]) -> str:
    head = f"{'data':<44} {'n':>7} {'accuracy':>9} {'robust':>8} {'worst':>8}"
    lines = [head, "-" * len(head)]
    for row in rows:
        robust = row.get("robust_accuracy")
        worst = row.get("worst_case_accuracy")
        lines.append(
            f"{row['data'][:44]:<44} {row['n']:>7} {row['accuracy']:>9.4f} "
            f"{'' if robust is None else f'{robust:.4f}':>8} "
            f"{'' if worst is None else f'{worst:.4f}':>8}"
        )
        targets = row.get("per_target", {})
        if list(targets) != ["class"]:  # attributes: one line each
            for name, acc in targets.items():
                rob = acc.get("robust_accuracy")
                lines.append(f"{'  ' + name:<44} {row['n']:>7} {acc['accuracy']:>9.4f} "
                             f"{'' if rob is None else f'{rob:.4f}':>8}")  # fmt: skip
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    runfiles.write_json_atomic(path, payload)

"""Training stage, the attack: one AdvMix epoch against one nominal epoch.

One AdvMix epoch (K=5, 1 restart, ball projection, early stop on; and the variants in
``ATTACK_VARIANTS``: no early stop, no ascent at all, mixes alone) vs one nominal epoch, from
the same warmed-up classifier, with a generator of the shipped one's 32x32 architecture and k
(random weights) on a synthetic store whose labels depend on the styles; plus ATen operators
and host syncs per step (``benchmarks/op_count.py``), the cost that matters on a launch-bound
GPU. Target: <= 3x with early stop. The stream's own figures: ``benchmarks/bench_stream.py``.

``classifier_layout``: the classifier's training step and scoring on the CPU in the memory
layout it uses there (channels-last) against NCHW, and scoring with BatchNorm folded.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from benchmarks.bench_stream import write_store
from schemas.layout import Layout

ATTACK_VARIANTS = {  # name: (method, settings)
    "nominal": ("nominal", {}),
    "randmix": ("randmix", {}),
    "advmix": ("advmix", {"attack_steps": 5}),
    "advmix_no_early_stop": ("advmix", {"attack_steps": 5, "early_stop": False}),
    # no ascent at all: decode and check each example's start, train on nominal + mixes;
    # the least any AdvMix step of this configuration can cost, whatever K and early stop
    "advmix_k0": ("advmix", {"attack_steps": 0}),
    "advmix_mixes_only": ("advmix", {"attack_steps": 5, "train_on": "mixes"}),
}


def measure_attack_cost(
    num_samples: int = 512,
    batch: int = 64,
    device: str = "cpu",
    repeats: int = 1,
    width: int = 32,
    variants: tuple[str, ...] = tuple(ATTACK_VARIANTS),
) -> dict:
    """Epoch seconds per variant (``ATTACK_VARIANTS``; nominal always), the best of ``repeats``
    (on a GPU the first epoch of a method also pays its one-time kernel loads); ``width`` is
    the classifier's (SmallCNN; the default is the project's)."""
    import torch

    from advmix.checkpoints import generator_fingerprint, save_generator
    from advmix.settings import from_flat
    from advmix.stylegan import Generator, GeneratorConfig, to_unit
    from benchmarks.op_count import OpCounter
    from training.config import TrainConfig
    from training.train import Trainer

    if device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    # the project's 32x32 architecture (advmix gan train defaults), random weights
    G = Generator(GeneratorConfig(channel_base=1024, channel_max=128, k=4)).eval()
    with torch.no_grad():
        w = G.mapping(torch.randn(num_samples, G.z_dim, generator=torch.Generator().manual_seed(1)))
        images = torch.cat(
            [to_unit(G.synthesis(w[i : i + 128])) for i in range(0, num_samples, 128)]
        )
    # labels from the images' coarse content: 10 bins of a random projection of the styles
    proj = w[:, 0] @ torch.randn(G.w_dim, generator=torch.Generator().manual_seed(2))
    labels = torch.bucketize(proj, torch.quantile(proj, torch.linspace(0.1, 0.9, 9))).numpy()
    out: dict = {
        "samples": num_samples,
        "batch_size": batch,
        "attack_steps": 5,
        "k": G.cfg.k,
        "classifier_width": width,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        gpath = Path(tmp) / "G.pt"
        save_generator(G, gpath)
        layout = Layout(
            num_samples=num_samples, shard_size=128, num_ws=G.num_ws, w_dim=G.w_dim,
            w_dtype="float32", image_shape=(3, 32, 32),
            label_names=tuple(f"c{i}" for i in range(10)),
        )  # fmt: skip
        write_store(
            str(Path(tmp) / "s.zarr"), layout, fingerprint=generator_fingerprint(G),
            w=w.numpy(), labels=labels,
            images=(images * 255).round().to(torch.uint8).numpy(),
        )  # fmt: skip

        def trainer(method, name, **kw):
            cfg = from_flat(TrainConfig, dict(
                store=str(Path(tmp) / "s.zarr"), generator=str(gpath), method=method, epochs=1,
                batch_size=batch, buffer_size=256, checkpoint_every=10_000, width=width, **kw,
            ))  # fmt: skip
            return Trainer(cfg, Path(tmp) / name, device=device)

        warm = trainer("nominal", "warm")
        warm.cfg.epochs = 2
        warm.train()
        state = {k: v.clone() for k, v in warm.model.state_dict().items()}

        def prepared(method, name, **kw) -> Trainer:
            """A trainer at the start of epoch 2 of the warmed-up classifier."""
            t = trainer(method, name, **kw)
            t.model.load_state_dict(state)
            t.stream.set_epoch(2)
            t.resumed = True  # keep the epoch set above
            t.epoch = 2
            t.cfg.epochs = 3
            return t

        def epoch_s(method, name, **kw) -> float:
            t = prepared(method, name, **kw)
            return t.run_epoch(t.stream.loader(), progress=False)["epoch_s"]

        def stream_s() -> float:
            """The nominal epoch's input side alone: stream, batch to device, no training."""
            t = trainer("nominal", "stream")
            t.stream.set_epoch(2)
            started = time.perf_counter()
            for batch in t.stream.loader():
                t.nominal_images(batch), batch["label"].to(t.device)
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started

        def per_step(method, name, **kw) -> dict:
            """ATen operators per step over one more (untimed) epoch: all of them (the CPU's
            per-parameter Adam included), and those of the attack alone with its host syncs."""
            t = prepared(method, f"{name}-count", **kw)
            attack = OpCounter()
            evaluations = []

            def counted(ctx, x, w, y, gen):
                with attack:
                    made = make(ctx, x, w, y, gen)
                evaluations.append(made.info.get("evaluations", 0))  # mixes decoded
                return made

            make, t.make_batch = t.make_batch, counted
            with OpCounter() as everything:
                summary = t.run_epoch(t.stream.loader(), progress=False)
            steps = math.ceil(summary["samples"] / batch)
            return {
                "ops": round(everything.ops / steps),
                "attack_ops": round(attack.ops / steps),
                "attack_syncs": round(attack.syncs / steps, 1),
                # images decoded and classified per example: 1 .. K + 1 (early stop)
                "evaluations_per_example": round(sum(evaluations) / summary["samples"], 2),
            }

        variants = {name: ATTACK_VARIANTS[name] for name in ("nominal", *variants)}
        seconds = dict.fromkeys(variants, math.inf)
        for i in range(repeats):  # interleaved, so a slow spell of the machine hits all alike
            for name, (method, kw) in variants.items():
                seconds[name] = min(seconds[name], epoch_s(method, f"{name}-{i}", **kw))
        ops = {name: per_step(m, name, **kw) for name, (m, kw) in variants.items()}
        input_s = min(stream_s() for _ in range(repeats))
    nominal_s = seconds["nominal"]
    out["input_only_epoch_s"] = round(input_s, 2)
    out |= {f"{name}_epoch_s": round(secs, 2) for name, secs in seconds.items()}
    out |= {f"{name}_vs_nominal": round(secs / nominal_s, 2)
            for name, secs in seconds.items() if name != "nominal"}  # fmt: skip
    out["per_step"] = ops
    out["target_advmix_vs_nominal"] = "<= 3"
    return out


def classifier_layout(repeats: int = 5, steps: int = 10) -> dict:
    """The classifier on the CPU, as ``SmallCNN.features`` runs it (channels-last) against the
    same layers fed NCHW tensors: seconds of ``steps`` training steps (batch 64, forward,
    backward, Adam) and of scoring ``steps`` batches of 250, the best of ``repeats``; and
    scoring as evaluation does it, BatchNorm folded into the convolutions
    (``SmallCNN.for_inference``), against the same channels-last model unfolded."""
    import torch

    from advmix.classifiers import SmallCNN

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters())
    train_x, train_y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    eval_x = torch.rand(250, 3, 32, 32)

    def train_s() -> float:
        model.train()
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(train_x), train_y).backward()
            optimizer.step()
        return time.perf_counter() - started

    @torch.no_grad()
    def eval_s(folded: bool = False) -> float:
        net = model.for_inference() if folded else model.eval()
        started = time.perf_counter()
        for _ in range(steps):
            net(eval_x)
        return time.perf_counter() - started

    best = dict.fromkeys(("train_nchw", "train_ours", "eval_nchw", "eval_ours", "eval_folded"),
                         math.inf)  # fmt: skip
    for _ in range(repeats):  # interleaved: a slow spell of the machine hits all alike
        for kind, timed in (("train", train_s), ("eval", eval_s)):
            for layout, channels_last in (("nchw", False), ("ours", True)):
                model.cpu_channels_last = channels_last
                best[f"{kind}_{layout}"] = min(best[f"{kind}_{layout}"], timed())
        best["eval_folded"] = min(best["eval_folded"], eval_s(folded=True))
    return {
        **{f"{key}_s": round(secs, 3) for key, secs in best.items()},
        "train_speedup": round(best["train_nchw"] / best["train_ours"], 2),
        "eval_speedup": round(best["eval_nchw"] / best["eval_ours"], 2),
        "fold_speedup": round(best["eval_ours"] / best["eval_folded"], 2),
    }


def run() -> dict:
    return {"attack_cost": measure_attack_cost(), "classifier_layout": classifier_layout()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

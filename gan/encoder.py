"""Training the amortised encoder (``advmix.encoder``) for a frozen generator, resumable bit-exactly.

Phase 1, ``synthetic`` (``steps`` steps): the generator makes the training pairs. Styles come
from random z with per-sample style mixing (as in GAN training, so the encoder sees W+ styles
whose levels disagree, which is what inversion produces), the images from synthesis with
constant noise (as Algorithm 1 decodes). The loss is
    latent_weight * ||E(x) - w+||^2 + pixel_weight * ||G(E(x)) - x||^2
    + perceptual_weight * d_vgg(G(E(x)), x),
with ``d_vgg`` Algorithm 1's normalised feature distance (``advmix.encoder.perceptual_distance``)
and every squared term a mean over elements. The latent term teaches where the styles live,
the reconstruction terms what matters to the eye (many styles give the same image).
Phase 2, ``real`` (``real_steps`` steps, optional): unlabelled real images, reconstruction terms
only, to close the gap between the generator's samples and the data inversion will meet.
``mix_weight`` > 0 adds Algorithm 1's mixing loss on the prediction in both phases (the
prediction's coarse styles with fresh random fine ones must still look like the image), so the
start keeps the content in the coarse styles that Algorithm 1 will ask of it.

``passes`` > 0 trains an iterative encoder (``advmix.encoder.IterativeEncoder``): the loss above
on the prediction after every refinement pass (each pass's input styles detached, as ReStyle
trains), plus on the base pass unless the base comes from ``init_from``. ``init_from``, a
trained direct encoder for the same generator, starts the run from its weights: a direct run
fine-tunes it; an iterative run keeps it frozen as the base pass and copies its trunk into the
refiner (the reconstruction's input channels start at random), so only the refiner trains.

Every random draw of step ``i`` (z, mixing cut, real batch) is made under the RNG seeded by
``(seed, i)`` and the checkpoint holds the encoder, Adam's state, the step and the config, so a
resumed run equals an uninterrupted one bit for bit on the same device. The run directory gets
``checkpoint.pt`` (atomic), ``metrics.jsonl``, ``config.json``, ``tb/`` (TensorBoard, when it is
installed) and at the end ``encoder.pt`` (``advmix.encoder.save_encoder``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from advmix.checkpoints import atomic_save, generator_fingerprint, safe_load
from advmix.encoder import (
    EncoderConfig,
    build_encoder,
    load_encoder,
    perceptual_distance,
    save_encoder,
)
from advmix.errors import AdvmixError
from advmix.perceptual import VGGFeatures
from advmix.settings import check, setting, settings, spec_of
from advmix.spec import parse_spec
from advmix.stylegan import Generator, resolve_k
from gan.train import images_to_generator_range, iteration_seed, style_mixed_ws

TRAIN_CHECKPOINT_FORMAT = "advmix-encoder-training-state"
_TERMS = ("latent", "pixel", "perceptual", "mix", "loss")


@dataclass
class EncoderTrainConfig:
    steps: int = setting(5000, "Steps on the generator's own samples.", low=0)
    batch: int = setting(32, "Images per step.", low=1, fixed=True)
    lr: float = setting(1e-3, "Adam learning rate, both phases.", low=0, low_open=True,
                        fixed=True)  # fmt: skip
    style_mix_prob: float = setting(0.9, "Style mixing probability of the training samples.",
                                    low=0, high=1, fixed=True)  # fmt: skip
    truncation_psi: float = setting(1.0, "Truncation of the training samples.", low=0, high=1,
                                    fixed=True)  # fmt: skip
    latent_weight: float = setting(1.0, "Weight of ||E(x) - w||^2.", low=0, fixed=True)
    pixel_weight: float = setting(1.0, "Weight of ||G(E(x)) - x||^2.", low=0, fixed=True)
    perceptual_weight: float = setting(1.0, "Weight of the VGG distance of G(E(x)) to x.",
                                       low=0, fixed=True)  # fmt: skip
    # Not fixed: a finished synthetic run may be resumed to add a real phase.
    real_data: str | None = setting(
        None, "Real unlabelled images (dataset spec) for the fine-tuning phase.", flag="data"
    )
    real_steps: int = setting(0, "Fine-tuning steps on --data, reconstruction only.", low=0)
    mix_weight: float = setting(0.0, "Weight of Algorithm 1's mixing loss on the prediction.",
                                low=0, fixed=True)  # fmt: skip
    passes: int = setting(0, "Refinement passes: > 0 trains an iterative (ReStyle-style) encoder.",
                          low=0, high=16, fixed=True)  # fmt: skip
    init_from: str | None = setting(
        None, "A trained direct encoder for this generator to start from (frozen base pass of "
        "an iterative encoder).", kind="file", fixed=True)  # fmt: skip
    width: int = setting(32, "Channels of the encoder's first conv.", low=1, fixed=True)
    max_width: int = setting(256, "Channel cap of the encoder.", low=1, fixed=True)
    seed: int = setting(0, "Seeds the weights and every draw.", low=0, fixed=True)
    log_every: int = setting(50, "Steps between metric lines.", low=1)
    checkpoint_every: int = setting(500, "Steps between checkpoints.", low=1)

    def __post_init__(self) -> None:
        try:
            check(self)
        except ValueError as exc:
            raise AdvmixError(f"encoder training: {exc}") from None
        if self.real_steps > 0 and not self.real_data:
            raise AdvmixError("encoder training: --real-steps needs --data (a dataset spec)")
        if self.real_data and self.real_steps == 0:  # the data would be silently ignored
            raise AdvmixError("encoder training: --data needs --real-steps N (N > 0)")
        if self.real_data:
            parse_spec(self.real_data)  # a bad spec is one line now, not after the first phase

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdvmixError(f"unknown encoder training settings {unknown}")
        return cls(**data)

    def fixed(self) -> dict:
        """The settings that must match to resume (all but run length and report intervals)."""
        return {f.name: getattr(self, f.name) for f, _ in settings(type(self)) if spec_of(f).fixed}


class EncoderTrainer:
    def __init__(
        self,
        cfg: EncoderTrainConfig,
        G: Generator,
        features: VGGFeatures,
        run_dir,
        device: str | torch.device = "cpu",
    ):
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), torch.device(device)
        self.G = G.to(self.device).eval().requires_grad_(False)
        self.features = features.to(self.device).eval().requires_grad_(False)
        self.generator_fingerprint = generator_fingerprint(self.G)
        enc_cfg = EncoderConfig(
            resolution=G.cfg.resolution,
            img_channels=G.cfg.img_channels,
            num_ws=G.num_ws,
            w_dim=G.w_dim,
            width=cfg.width,
            max_width=cfg.max_width,
            kind="iterative" if cfg.passes else "direct",
            passes=cfg.passes,
        )
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, not the caller
            torch.manual_seed(cfg.seed)
            self.E = build_encoder(enc_cfg, w_avg=G.w_avg.detach().cpu())
        self.frozen_base = cfg.init_from is not None and cfg.passes > 0
        if cfg.init_from is not None:
            self._start_from(cfg.init_from, enc_cfg)
        self.E = self.E.to(self.device).train()
        self.E.attach(self.G)
        self.k = resolve_k(self.G, None)
        trained = self.E.refiner if self.frozen_base else self.E
        self.optimiser = torch.optim.Adam(trained.parameters(), lr=cfg.lr)
        self.step = 0
        self.elapsed_s = 0.0
        self.real_images: Tensor | None = None  # uint8 on the CPU, loaded on first need
        self.last_record: dict = {}

    def _start_from(self, path: str, enc_cfg: EncoderConfig) -> None:
        """Weights from the direct encoder at ``path`` (module docstring); one line when it
        does not fit this run."""
        try:
            source, info = load_encoder(path)
        except Exception as exc:  # CheckpointError and kin: already one line naming the path
            raise AdvmixError(f"--init-from {exc}") from None
        if info["generator_fingerprint"] != self.generator_fingerprint:
            raise AdvmixError(f"--init-from {path}: that encoder was trained for another generator")
        if source.cfg != enc_cfg.trunk():
            got = {k: v for k, v in source.cfg.to_dict().items() if enc_cfg.to_dict().get(k) != v}
            raise AdvmixError(f"--init-from {path}: a direct encoder whose architecture differs "
                              f"from this run's ({got}); pass its --width and --max-width")  # fmt: skip
        state = source.state_dict()
        if not self.frozen_base:
            self.E.load_state_dict(state)
            return
        self.E.base.load_state_dict(state)
        self.E.base.requires_grad_(False)
        refiner = self.E.refiner.state_dict()
        channels = enc_cfg.img_channels
        for name, value in state.items():
            if name == "from_rgb.weight":  # the image's channels; the reconstruction's stay
                refiner[name][:, :channels] = value
            elif not name.startswith("heads.") and name != "w_avg":
                refiner[name] = value.clone()
        self.E.refiner.load_state_dict(refiner)

    @property
    def total_steps(self) -> int:
        return self.cfg.steps + self.cfg.real_steps

    # -- state ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        atomic_save(
            {
                "format": TRAIN_CHECKPOINT_FORMAT,
                "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
                "generator_fingerprint": self.generator_fingerprint,
                "step": self.step,
                "elapsed_s": self.elapsed_s,
                "encoder": self.E.state_dict(),
                "optimiser": self.optimiser.state_dict(),
            },
            self.checkpoint_path,
        )

    def load_checkpoint(self, path=None) -> None:
        """Continue a run: refuses another generator or changed settings (but _RESUMABLE)."""
        path = Path(path or self.checkpoint_path)
        data = safe_load(path, map_location=self.device, what="encoder training checkpoint")
        if not isinstance(data, dict) or data.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise AdvmixError(f"{path}: not an advmix encoder training checkpoint")
        try:
            stored = EncoderTrainConfig.from_dict(json.loads(data["config"])).fixed()
            encoder_state, optimiser_state = data["encoder"], data["optimiser"]
            step, elapsed_s = int(data["step"]), float(data["elapsed_s"])
        except (KeyError, TypeError, ValueError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise AdvmixError(f"{path}: malformed encoder training checkpoint ({reason})") from None
        ours = self.cfg.fixed()
        if stored != ours:
            diff = sorted(k for k in stored if stored[k] != ours.get(k))
            raise AdvmixError(f"{path}: cannot resume, settings differ from the run's: {diff}")
        if data.get("generator_fingerprint") != self.generator_fingerprint:
            raise AdvmixError(f"{path}: cannot resume, the run trained for another generator")
        self.E.load_state_dict(encoder_state)
        self.optimiser.load_state_dict(optimiser_state)
        self.step, self.elapsed_s = step, elapsed_s

    # -- data ----------------------------------------------------------------------------------
    def load_real_data(self, data_root: str | None = None) -> None:
        from advmix.datasets import load

        data = load(self.cfg.real_data, data_root=data_root)
        got = tuple(data.images.shape[1:])
        res, channels = self.G.cfg.resolution, self.G.cfg.img_channels
        if got != (channels, res, res):
            raise AdvmixError(
                f"{self.cfg.real_data}: images are {got[0]}x{got[1]}x{got[2]}, "
                f"the generator makes {channels}x{res}x{res}"
            )
        self.real_images = torch.from_numpy(data.images)

    # -- one step ------------------------------------------------------------------------------
    def phase(self, step: int) -> str:
        return "synthetic" if step < self.cfg.steps else "real"

    def _draw_batch(self, phase: str) -> tuple[Tensor, Tensor | None]:
        """(images, their styles or None for real images); uses the already seeded RNG."""
        cfg, G = self.cfg, self.G
        if phase == "real":
            idx = torch.randint(0, len(self.real_images), (cfg.batch,))
            return images_to_generator_range(self.real_images[idx]).to(self.device), None
        # z drawn on the CPU so the pairs do not depend on the device's RNG.
        z = torch.randn(cfg.batch, G.z_dim).to(self.device)
        z2 = torch.randn(cfg.batch, G.z_dim).to(self.device)
        with torch.no_grad():
            ws = style_mixed_ws(G, z, z2, cfg.style_mix_prob)
            if cfg.truncation_psi != 1.0:
                ws = G.w_avg.lerp(ws, cfg.truncation_psi)
            return G.synthesis(ws, noise_mode="const"), ws

    def _terms(self, pred: Tensor, images: Tensor, ws: Tensor | None, target_feats,
               z_mix: Tensor | None) -> dict[str, Tensor]:  # fmt: skip
        """The loss terms of one prediction (module docstring), their weighted sum as "loss"."""
        cfg, G = self.cfg, self.G
        terms: dict[str, Tensor] = {}
        if ws is not None:
            terms["latent"] = (pred - ws).square().mean()
        if cfg.pixel_weight or cfg.perceptual_weight or ws is None:
            recon = G.synthesis(pred, noise_mode="const")
            terms["pixel"] = (recon - images).square().mean()
            terms["perceptual"] = perceptual_distance(self.features(recon), target_feats).mean()
        if z_mix is not None:
            mixed = G.synthesis(G.mix(pred, G.mapping(z_mix), self.k), noise_mode="const")
            terms["mix"] = perceptual_distance(self.features(mixed), target_feats).mean()
        weights = {"latent": cfg.latent_weight, "pixel": cfg.pixel_weight,
                   "perceptual": cfg.perceptual_weight, "mix": cfg.mix_weight}  # fmt: skip
        terms["loss"] = sum(weights[name] * value for name, value in terms.items())
        return terms

    def _losses(self, images: Tensor, ws: Tensor | None, z_mix: Tensor | None = None
                ) -> dict[str, Tensor]:  # fmt: skip
        """Terms of the final prediction; "loss" sums the trained predictions' losses."""
        with torch.no_grad():
            target_feats = self.features(images)
        if self.cfg.passes == 0:
            return self._terms(self.E(images), images, ws, target_feats, z_mix)
        with torch.set_grad_enabled(not self.frozen_base):
            pred = self.E.base(images)
        total = 0.0
        if not self.frozen_base:
            total = self._terms(pred, images, ws, target_feats, z_mix)["loss"]
        for _ in range(self.cfg.passes):
            start = pred.detach()
            with torch.no_grad():
                recon = self.G.synthesis(start, noise_mode="const")
            pred = self.E.refine(images, start, recon)
            terms = self._terms(pred, images, ws, target_feats, z_mix)
            total = total + terms["loss"]
        return {**terms, "loss": total}

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns the step's loss terms as floats."""
        phase = self.phase(self.step)
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # step i's draws depend on (seed, i) only
            torch.manual_seed(iteration_seed(self.cfg.seed, self.step))
            images, ws = self._draw_batch(phase)
            z_mix = torch.randn(self.cfg.batch, self.G.z_dim) if self.cfg.mix_weight else None
        if z_mix is not None:
            z_mix = z_mix.to(self.device)
        terms = self._losses(images, ws, z_mix)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise AdvmixError(
                f"encoder training diverged at step {self.step + 1} ({phase}): loss {loss.item()}"
            )
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.step += 1
        return {name: value.item() for name, value in terms.items()}

    # -- the loop ------------------------------------------------------------------------------
    def train(self, progress: bool = True, time_limit_s: float | None = None) -> Path:
        """Run to ``steps + real_steps`` (or until ``time_limit_s`` of this session's wall time,
        then checkpoint); always ends by writing ``encoder.pt``, whose path it returns."""
        from tqdm import tqdm

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        if cfg.real_steps > 0 and self.real_images is None:
            self.load_real_data()
        writer = _tensorboard(self.run_dir / "tb")
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not progress, unit="step",
                   dynamic_ncols=True)  # fmt: skip
        running: dict[str, list[float]] = {}
        session_start = time.perf_counter()
        stopped = None
        try:
            while self.step < self.total_steps:
                phase = self.phase(self.step)
                started = time.perf_counter()
                stats = self.train_step()
                self.elapsed_s += time.perf_counter() - started
                for name, value in stats.items():
                    running.setdefault(name, []).append(value)
                bar.update(1)
                step = self.step
                # A line never mixes phases: the last synthetic step always closes one.
                if step % cfg.log_every == 0 or step in (cfg.steps, self.total_steps):
                    self._log(phase, running, writer)
                    bar.set_postfix(phase=phase, loss=f"{self.last_record['loss']:.4f}")
                    running = {}
                out_of_time = (
                    time_limit_s is not None and time.perf_counter() - session_start > time_limit_s
                )
                if step % cfg.checkpoint_every == 0 or step == self.total_steps or out_of_time:
                    self.save_checkpoint()
                if out_of_time:
                    stopped = "time limit"
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self.save_final(stopped)

    def _log(self, phase: str, running: dict[str, list[float]], writer) -> None:
        means = {name: sum(v) / len(v) for name, v in running.items()}
        record = {"step": self.step, "phase": phase}
        record.update({name: means.get(name) for name in _TERMS})  # None: not a term here
        record["elapsed_s"] = round(self.elapsed_s, 3)
        self.last_record = record
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if writer is not None:
            for name, value in means.items():
                writer.add_scalar(f"{phase}/{name}", value, self.step)

    def save_final(self, stopped: str | None = None) -> Path:
        extra = {
            "train_config": self.cfg.to_dict(),
            "steps": self.step,
            "train_wall_s": round(self.elapsed_s, 1),
            "final_metrics": self.last_record,
        }
        if stopped:
            extra["stopped"] = stopped
        path = self.run_dir / "encoder.pt"
        save_encoder(self.E, path, generator_fingerprint=self.generator_fingerprint, extra=extra)
        return path


def _tensorboard(log_dir: Path):
    """A SummaryWriter, or None when TensorBoard is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))

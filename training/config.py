"""``TrainConfig``: every setting of a training run, typed once.

The fields carry their option specs (``advmix.settings``): ``advmix train`` builds its options
from them, the trainer reads them, the run record and checkpoints store them flat under their
option names (``attack_steps``, ``eps``, ...), and ``--config`` files use the same names.
Algorithm 2's settings are ``AdvMixConfig`` (shared with ``advmix evaluate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from advmix.attacks import AdvMixConfig
from advmix.classifiers import ARCHITECTURES
from advmix.settings import as_flat_dict, check, setting
from training.methods import METHODS, TRAIN_ON

# What a step trains on when --train-on is not given: AT trains on its adversarial examples
# alone (Madry et al.); RandMix on the nominal batch and its mixes; AdvMix on the nominal batch,
# its worst-case mixes and its random starts (the levers study, docs/training.md: Algorithm 2's
# nominal + worst-case mix is --train-on both).
DEFAULT_TRAIN_ON = {"at": "mixes", "randmix": "both", "advmix": "both+random"}
# --lr-schedule: the factor on --lr at a share p in [0, 1] of the run's steps.
LR_SCHEDULES = {
    "constant": lambda p: 1.0,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}


@dataclass
class TrainConfig:
    store: str = setting(help="Latent store URL (any fsspec URL).")
    generator: str = setting(
        help="Generator checkpoint; must be the one the store was encoded with.", kind="file"
    )
    method: str = setting("advmix", "Training method.", choices=tuple(METHODS), fixed=True)
    epochs: int = setting(10, "Epochs (may grow on --resume).", low=1)
    batch_size: int = setting(64, "Examples per step.", low=1, fixed=True)
    lr: float = setting(1e-3, "Adam learning rate.", low=0, low_open=True, fixed=True)
    lr_schedule: str = setting(
        "cosine", "Learning rate over the run: cosine decay from --lr to 0 at the end of "
        "--epochs (a --resume with more epochs stretches the curve from that step on), or "
        "constant.",
        choices=tuple(LR_SCHEDULES), fixed=True,
    )  # fmt: skip
    weight_decay: float = setting(0.0, "Adam weight decay.", low=0, fixed=True)
    seed: int = setting(0, "Seeds the model, the data order and every draw.", low=0, fixed=True)
    k: int | None = setting(
        None, "Coarse/fine split: styles [0, k) are the content AdvMix keeps "
        "[default: the store's, else the generator's].", low=1, fixed=True,
    )  # fmt: skip
    train_on: str | None = setting(
        None, "Train on nominal + perturbed examples, or perturbed only; +random: AdvMix also "
        "trains on each example's random start, a RandMix sample it decoded anyway "
        "[default: both+random for advmix, both for randmix, mixes for at].", choices=TRAIN_ON,
        fixed=True,
    )  # fmt: skip
    eps: float = setting(8 / 255, "AT l_inf radius, pixel units (e.g. 8/255).", low=0, high=1,
                         kind="fraction", fixed=True)  # fmt: skip
    pgd_steps: int = setting(7, "AT PGD steps.", low=1, fixed=True)
    mixup_alpha: float = setting(1.0, "mixup Beta(alpha, alpha).", low=0, low_open=True, fixed=True)
    irm_penalty_weight: float = setting(
        91257.18613115903, "IRMv1 penalty weight once annealed (the reference's Colored MNIST "
        "value).", low=0, fixed=True,
    )  # fmt: skip
    irm_anneal_steps: int = setting(
        190, "IRMv1 steps with penalty weight 1 before --irm-penalty-weight applies.", low=0,
        fixed=True,
    )  # fmt: skip
    grayscale: bool = setting(
        False, "Colour-blind classifier (max over RGB) at train and eval: the oracle baseline.",
        fixed=True,
    )  # fmt: skip
    target: tuple[str, ...] = setting(
        (), "Attribute to predict (repeatable: several at once, multi-label) [default: the "
        "store's class labels].", fixed=True,
    )  # fmt: skip
    arch: str = setting("smallcnn", "Classifier architecture.", choices=tuple(ARCHITECTURES),
                        fixed=True)  # fmt: skip
    arch_weights: str | None = setting(None, "Pretrained torchvision weights for a ResNet "
                                       "(all but its last layer).", kind="file", fixed=True)  # fmt: skip
    input_size: int | None = setting(None, "Resize the classifier's inputs to this size "
                                     "[default: the store's images].", low=8, fixed=True)  # fmt: skip
    width: int = setting(32, "SmallCNN width.", low=1, fixed=True)
    buffer_size: int = setting(4096, "Shuffle buffer.", low=0, fixed=True)
    workers: int = setting(0, "DataLoader workers.", low=0, fixed=True)
    checkpoint_every: int = setting(50, "Steps between checkpoints.", low=1)
    log_every: int = setting(10, "Steps between metric lines.", low=1)
    max_steps: int | None = setting(None, "Stop after N steps in total.", low=1)
    eval_data: tuple[str, ...] = setting(
        (), "Dataset spec to score while training (repeatable, e.g. cfmnist:random?limit=2000): "
        "accuracies go to metrics.jsonl with the training seconds so far.", kind="dataset",
    )  # fmt: skip
    eval_every: int | None = setting(
        None, "Steps between --eval-data scores [default: at each epoch's end only].", low=1
    )
    attack: AdvMixConfig = field(default_factory=AdvMixConfig)
    storage_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.target = tuple(self.target)
        self.eval_data = tuple(self.eval_data)
        check(self)
        if self.train_on is None:
            self.train_on = DEFAULT_TRAIN_ON.get(self.method, "both")
        if self.train_on.endswith("+random") and self.method != "advmix":
            raise ValueError(f"--train-on {self.train_on} adds AdvMix's random starts; --method "
                             f"{self.method} has none")  # fmt: skip

    def to_dict(self, redact: bool = True) -> dict:
        """Flat ``{option name: value}``, the form run records and checkpoints keep."""
        data = {**as_flat_dict(self), "storage_options": dict(self.storage_options)}
        if redact:
            from schemas.urls import mask, redact_url

            data["storage_options"] = mask(data["storage_options"])
            data["store"] = redact_url(data["store"])
        return data

"""The DoFns of the encode job, one per named step of ``pipeline.encode``."""

from __future__ import annotations

import bisect
import hashlib
import logging

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.model_handler import EncodeBatch
from pipeline.sources import Rejected, SampleRef, decode
from schemas.writer import StoreWriter

NAMESPACE = "advmix_encode"
REJECTED = "rejected"
log = logging.getLogger("pipeline.encode")


def sample_seed(sample_id: str) -> int:
    """Seed of a sample's mixing noise, from its id: the same whatever its batch or position."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:7], "big")


class DecodeFn(beam.DoFn):
    """SampleRef -> (ref, uint8 image) on the main output, or a dead-letter row on REJECTED."""

    def __init__(self, kind, source, image_shape, num_classes, storage_options,
                 resize="center-crop", attribute_count=0):  # fmt: skip
        self._args = (kind, source, tuple(image_shape), num_classes, storage_options, resize,
                      attribute_count)  # fmt: skip
        self.read = Metrics.counter(NAMESPACE, "images_read")
        self.rejected = Metrics.counter(NAMESPACE, "images_rejected")

    def process(self, ref: SampleRef):
        self.read.inc()
        try:
            image = decode(ref, *self._args)
        except Rejected as exc:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(
                REJECTED, {"id": ref.id, "source": ref.uri, "reason": str(exc)}
            )
            return
        yield ref, image


class AssignShardFn(beam.DoFn):
    """(ref, image) -> (shard, (sample, ref, image)) with dense sample numbers over accepted
    inputs; shards that an earlier run completed are dropped here, before the costly step."""

    def __init__(self, shard_size: int, completed: set[int]):
        self.shard_size = shard_size
        self.completed = completed
        self.skipped = Metrics.counter(NAMESPACE, "images_skipped_resumed")

    def process(self, element, accepted: list[int]):
        ref, image = element
        sample = bisect.bisect_left(accepted, ref.position)
        shard = sample // self.shard_size
        if shard in self.completed:
            self.skipped.inc()
            return
        yield shard, (sample, ref, image)


def batch_shard(element, batch_size: int):
    """(shard, members) -> EncodeBatch of up to ``batch_size`` consecutive samples each."""
    shard, members = element
    members = sorted(members, key=lambda m: m[0])
    for start in range(0, len(members), batch_size):
        chunk = members[start : start + batch_size]
        yield EncodeBatch(
            shard=shard,
            samples=[sample for sample, _, _ in chunk],
            refs=[ref for _, ref, _ in chunk],
            images=np.stack([image for _, _, image in chunk]),
            seeds=[sample_seed(ref.id) for _, ref, _ in chunk],
        )


class WriteShardFn(beam.DoFn):
    """(shard, [PredictionResult of EncodeBatch]) -> shard number, after a whole-shard write."""

    def __init__(self, url: str, storage_options: dict, split: str | None, store_images: bool):
        self.url, self.storage_options = url, storage_options
        self.split, self.store_images = split, store_images
        self.written = Metrics.counter(NAMESPACE, "shards_written")
        self.encoded = Metrics.counter(NAMESPACE, "images_encoded")
        self.psnr = Metrics.distribution(NAMESPACE, "rec_psnr_centi_db")

    def process(self, element, created: str):
        shard, results = element
        results = sorted(results, key=lambda r: r.example.samples[0])
        refs = [ref for r in results for ref in r.example.refs]
        out = {
            name: np.concatenate([r.inference[name] for r in results])
            for name in ("w", "rec_mse", "rec_psnr")
        }
        writer = StoreWriter.open(self.url, self.storage_options)
        attributes = None
        if writer.layout.attribute_names:
            attributes = np.array([ref.attributes for ref in refs], dtype=np.int8)
        writer.write_shard(
            shard,
            w=out["w"],
            labels=np.array([ref.label for ref in refs], dtype=np.int64),
            images=np.concatenate([r.example.images for r in results])
            if self.store_images
            else None,
            attributes=attributes,
            rows={
                "id": [ref.id for ref in refs],
                "source": [ref.uri for ref in refs],
                "split": [self.split] * len(refs),
                "rec_mse": out["rec_mse"],
                "rec_psnr": out["rec_psnr"],
            },
        )
        self.written.inc()
        self.encoded.inc(len(refs))
        for value in out["rec_psnr"]:
            self.psnr.update(int(round(float(value) * 100)))
        log.info(
            "shard %d of %d written: %d images, mean PSNR %.2f dB",
            shard + 1, writer.num_shards, len(refs), out["rec_psnr"].mean(),
        )  # fmt: skip
        yield shard


def write_dead_letters(rows: list[dict], created: str, url: str, storage_options: dict) -> int:
    """All rejected inputs as one dead-letter part (rewritten whole on retry)."""
    if not rows:
        return 0
    rows = sorted(rows, key=lambda r: r["id"])
    return StoreWriter.open(url, storage_options).write_dead_letters("encode", rows)

"""Stage 1: ``python -m pipeline.encode`` inverts images into a latent store with Apache Beam.

The launcher lists the inputs, then runs two pipelines, neither of which groups anything:

    Create(listing chunks) -> Screen                  (pipeline.screen: which inputs decode)
    Create(shard plans) -> ReadShardInputs -> Invert -> WriteShard          (pipeline.transforms)

(a dataset spec's images are built on the launcher while listing, so it screens them itself).

Between them it reads the screening records, creates the store and plans its shards (accepted
inputs in listing order, ``--shard-size`` each); each shard is then read, inverted and written
by one worker, which leaves the shard's completion record in the store. After the second
pipeline the launcher reads the planned shards' records and commits (``manifest.json``, with
the listing's accounting), or names the missing shards in one line. No runner's GroupByKey,
nor a global combine, decides what a shard holds, so every runner writes the same bytes.

Runs on Beam's FnApiRunner by default (the DirectRunner would first try to download Prism);
``--runner=DaskRunner [--dask_client_address=HOST:PORT]`` runs on a Dask cluster
(``pipeline.engines``), and any other Beam option (``--runner=DataflowRunner``,
``--direct_running_mode=multi_processing``, ...) passes through. Rerunning into an unfinished
store skips the shards it already holds.
"""

from __future__ import annotations

import json
import logging
import sys

import apache_beam as beam
import torch
from apache_beam.ml.inference.base import RunInference

from advmix.checkpoints import generator_fingerprint, load_generator
from advmix.encoder import encoder_fingerprint
from advmix.errors import AdvmixError
from advmix.inversion import START_ADAM, InversionConfig
from advmix.perceptual import load_features
from advmix.spec import parse_spec
from advmix.stylegan import resolve_k
from pipeline.artifacts import local_copy
from pipeline.engines import Engine
from pipeline.flags import build_parser
from pipeline.model_handler import InversionModelHandler, load_matching_encoder, resolve_device
from pipeline.screen import (
    SCREENED_HERE,
    ScreenFn,
    accepted_positions,
    chunks,
    clear_records,
    screen_here,
)
from pipeline.sources import Listing, list_inputs
from pipeline.transforms import ReadShardInputsFn, WriteShardFn, plan_shards
from schemas.errors import StoreError
from schemas.layout import MANIFEST, Layout
from schemas.lease import LEASE, WriterLease
from schemas.manifest import Provenance
from schemas.plan import plan_parts, read_plan
from schemas.reader import open_store
from schemas.urls import Location, install_redaction, parse_storage_option, redact
from schemas.writer import StoreWriter

log = logging.getLogger("pipeline.encode")
MAX_STORED_IMAGE_PIXELS = 64 * 64  # keep source images in the store up to this size


def plan_store(args, listing: Listing, G, num_accepted: int) -> tuple[Layout, Provenance]:
    C, H, W = G.cfg.img_channels, G.cfg.resolution, G.cfg.resolution
    layout = Layout(
        num_samples=num_accepted,
        shard_size=args.shard_size,
        num_ws=G.num_ws,
        w_dim=G.cfg.w_dim,
        w_dtype=args.w_dtype,
        image_shape=(C, H, W) if _stores_images(args, G) else None,
        label_names=listing.label_names,
        attribute_names=listing.attribute_names,
    )
    provenance = Provenance(
        k=args.inversion.k,
        generator_fingerprint=generator_fingerprint(G),
        generator_config=G.cfg.to_dict(),
        encoder={
            "algorithm": "advmix-1",
            **args.inversion.to_dict(),
            "features": args.features,
            **({"encoder_fingerprint": args.encoder_fingerprint} if args.encoder else {}),
            "preprocess": {"resize": args.resize, "size": G.cfg.resolution},
        },
        dataset=listing.source,
    )
    return layout, provenance


def run(argv: list[str] | None = None) -> dict:
    args, beam_args = build_parser().parse_known_args(argv)
    engine = Engine(beam_args)
    if engine.runs_here:  # a Dataflow launcher has no GPU of its own; its workers check
        resolve_device(args.device)
    storage_options = dict(parse_storage_option(text) for text in args.storage_option)
    output = Location(args.output, storage_options)
    if not args.overwrite and output.exists(MANIFEST):  # before any work, not after it
        raise StoreError(f"{output.display} is already a committed store; pass --overwrite to "
                         "replace it")  # fmt: skip
    if (args.init == "encoder") != (args.encoder is not None):
        build_parser().error("--init encoder and --encoder E.pt go together")
    generator_path = local_copy(args.generator, storage_options)
    G = load_generator(generator_path)
    if args.encoder:  # refused here, before any work, when unreadable or for another generator
        encoder = load_matching_encoder(local_copy(args.encoder, storage_options), G,
                                        generator_path, torch.device("cpu"))  # fmt: skip
        args.encoder_fingerprint = encoder_fingerprint(encoder)
    load_features(args.features)  # fail here, not on a worker, when the weights are unusable
    k = resolve_k(G, args.k)
    lr, betas = START_ADAM[args.init]
    args.inversion = InversionConfig(
        steps=args.steps,
        lr=args.lr if args.lr is not None else lr,
        betas=args.adam_betas or betas,
        w_avg_samples=args.w_avg_samples,
        beta_mix=(args.beta_mix,) * 3,
        mix_steps=args.mix_steps,
        k=k,
        seed=args.seed,
        init=args.init,
    )
    listing = list_inputs(
        args.input, storage_options, attributes=args.attributes, image_column=args.image_column,
        label_column=args.label_column,
    )  # fmt: skip
    if not args.overwrite:  # resuming: the shards there must come from these same settings
        _refuse_other_settings(output, plan_store(args, listing, G, 1)[1])
    image_shape = (G.cfg.img_channels, G.cfg.resolution, G.cfg.resolution)
    decode_args = (listing.kind, listing.source, image_shape, len(listing.label_names),
                   storage_options, args.resize, len(listing.attribute_names))  # fmt: skip
    handler = InversionModelHandler(
        args.generator,
        args.features,
        args.inversion,
        device=args.device,
        large_model=args.large_model,
        storage_options=storage_options,
        encoder_path=args.encoder,
        threads=args.torch_threads,
    )
    split = parse_spec(listing.source).split if listing.kind in ("spec", "celeba") else None
    screened = chunks(listing.refs)

    with WriterLease(output) as lease, engine.session():
        if args.overwrite:  # the job's own lease stays: it holds the store
            output.delete_all(keep=(LEASE,))
        if listing.kind in SCREENED_HERE:
            screen_here(output, decode_args, screened)
        else:
            screen = beam.Pipeline(options=engine.options(len(screened)))
            _ = (
                screen
                | "ListChunks" >> beam.Create(screened, reshuffle=True)
                | "Screen" >> beam.ParDo(ScreenFn(output, decode_args))
            )
            engine.run("screening", screen)
        accepted = accepted_positions(output, screened)
        if not accepted:
            raise StoreError("no usable input: every sample was rejected (see the reasons above)")
        layout, provenance = plan_store(args, listing, G, len(accepted))
        writer = StoreWriter.create(args.output, layout, provenance,
                                    storage_options=storage_options)  # fmt: skip
        completed = set(writer.completed_shards())
        plans = plan_shards(listing.refs, accepted, args.shard_size, completed)
        if plans:
            # Reshuffle spreads the plans over workers; what a shard holds never depends on it.
            encode = beam.Pipeline(options=engine.options(len(plans)))
            _ = (
                encode
                | "ShardPlans" >> beam.Create(plans, reshuffle=True)
                | "ReadShardInputs" >> beam.ParDo(ReadShardInputsFn(decode_args, args.batch_size))
                | "Invert" >> RunInference(handler)
                | "WriteShard"
                >> beam.ParDo(
                    WriteShardFn(args.output, storage_options, split, _stores_images(args, G))
                )
            )
            engine.run("encode", encode)
        if not lease.lost.is_set():  # a job that lost the store to another commits nothing
            writer.commit(listed=listing.listed, skipped=list(listing.skipped_rows))
            clear_records(output, screened)

    store = open_store(args.output, storage_options)
    counts = {
        "listed": listing.listed,
        "read": len(listing.refs),
        "encoded": store.num_samples,
        "rejected": store.num_dead_letters,
        "skipped": listing.skipped,
        "resumed_shards": len(completed),
        "mean_rec_psnr": round(float(store.index()["rec_psnr"].mean()), 3),
    }
    return counts


def _stores_images(args, G) -> bool:
    pixels = G.cfg.resolution**2
    return args.store_images == "yes" or (
        args.store_images == "auto" and pixels <= MAX_STORED_IMAGE_PIXELS
    )


def _refuse_other_settings(location: Location, provenance: Provenance) -> None:
    """One line, before any work, when the output holds an unfinished store that another
    generator, encoder, k or dataset started: its shards must never mix with this job's."""
    try:
        _, theirs = plan_parts(read_plan(location))
    except StoreError:
        return  # nothing there yet (or not a store, which creating it will say)
    mine, found = (json.loads(json.dumps(p.to_dict())) for p in (provenance, theirs))
    changed = sorted(key for key in mine.keys() | found.keys() if mine.get(key) != found.get(key))
    if changed:
        details = changed
        if "encoder" in changed:
            inner = mine.get("encoder") or {}, found.get("encoder") or {}
            details = [k for k in changed if k != "encoder"] + [
                f"encoder.{k}" for k in sorted(inner[0].keys() | inner[1].keys())
                if inner[0].get(k) != inner[1].get(k)
            ]  # fmt: skip
        raise StoreError(
            f"{location.display} holds an unfinished store started with other settings "
            f"({', '.join(details)}): rerun with those to resume it, or pass --overwrite"
        )


class _StepFailures(logging.Filter):
    """Drops Beam's log of a failing step (a traceback): the job stops and ``main`` prints the
    failure once, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("apache_beam") and record.levelno >= logging.ERROR)


def configure_logging() -> None:
    """Show the job's progress lines (INFO) and other libraries' warnings, credentials redacted."""
    # force: importing Beam already logged through the root logger, which configured it.
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("pipeline").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_StepFailures())
    install_redaction()


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    try:
        counts = run(argv)
    except (AdvmixError, StoreError, ValueError) as exc:
        # Beam re-raises a step's exception with the step's name appended to its message.
        print(f"Error: {redact(str(exc).strip().splitlines()[-1])}", file=sys.stderr)
        sys.exit(1)
    print(
        f"listed {counts['listed']}: encoded {counts['encoded']}, rejected {counts['rejected']}, "
        f"skipped {counts['skipped']} hidden (resumed {counts['resumed_shards']} shards); "
        f"mean PSNR {counts['mean_rec_psnr']} dB"
    )


if __name__ == "__main__":
    main()

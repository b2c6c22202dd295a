"""`generate(cfg)`: the one place that wires models, engine, latent stores and io into a slide on disk."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from gigagen import __version__
from gigagen.config import RunConfig, default_batch_size, validate
from gigagen.engine.cascade import (DenoiseFn, LevelPlan, level_spec, local_denoiser, plan_cascade, sample_cascade,
                                    with_written_level)
from gigagen.engine.decode import EXEMPLAR_GROUP_PX, decode_level, decode_tiles, level_tiles, stream_decode
from gigagen.engine.grid import Tiling
from gigagen.engine.layout import write_layout_level
from gigagen.engine.store import DiskStore, MemoryStore, remove_tree
from gigagen.engine.tiler import StepPlan, step_plans, tiles_per_level
from gigagen.errors import UserError
from gigagen.plan import estimate, latent_memory_bytes, versions
from gigagen.runstate import RunState, default_state_root, fingerprint, load_state
from gigagen.sampling.schedules import ddim_timesteps

PIXEL_CHUNK = 512
# ProgressFactory(description, total, unit) -> object with update(n) and close()
ProgressFactory = Callable[[str, int, str], Any]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(desc: str, total: int, unit: str) -> _NoProgress:
    return _NoProgress()


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - t0, 3)


@dataclass
class Job:
    """Everything one run needs, resolved once from the config and the model."""

    cfg: RunConfig
    out: Path
    runner: Any  # gigagen.models.denoiser.BundleRunner
    tiling: Tiling
    plans: list[LevelPlan]
    steps: list[list[StepPlan]]  # per level, finest first: its DDIM schedule
    state: RunState
    farm: Any = None  # gigagen.farm.Farm when tiles go to dask workers


def is_slide(out: Path) -> bool:
    return out.is_dir() and ((out / "run.json").exists() or (out / "slide.ome.zarr").exists())


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to touch an existing path unless --overwrite, and never delete something that is not a slide."""
    if not out.exists():
        return
    if not overwrite:
        hint = " or continue it with --resume" if (out / ".gigagen-state").exists() else ""
        raise UserError(f"{out} already exists; pass --overwrite to replace it{hint}")
    if not is_slide(out):
        raise UserError(f"{out} exists and is not a gigagen slide; refusing to replace it")


def check_resources(cfg: RunConfig, out: Path, plans: list[LevelPlan], channels: int | Sequence[int], store_kind: str) -> int:
    """Free disk and memory against the run's own estimate; returns the disk estimate in bytes."""
    import psutil

    est = estimate(cfg, plans, channels, store_kind)
    anchor = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(anchor).free
    if est["disk_bytes"] > free:
        raise UserError(f"a {cfg.width}x{cfg.height} slide needs about {est['disk_bytes'] / 1e9:.1f} GB but {anchor} has {free / 1e9:.1f} GB free")
    avail = psutil.virtual_memory().available
    if store_kind == "memory" and est["latent_memory_bytes"] > 0.8 * avail:
        raise UserError(f"the latents need {est['latent_memory_bytes'] / 1e9:.1f} GB but {avail / 1e9:.1f} GB of memory is available; lower --memory-budget")
    return est["disk_bytes"]


def choose_store(cfg: RunConfig, plans: list[LevelPlan], channels: int | Sequence[int]) -> str:
    """'memory' while the latents fit the budget and no workers share them, else per-tile files on disk."""
    fits = latent_memory_bytes(cfg, plans, channels) <= cfg.memory_budget
    if fits and not (cfg.scheduler or cfg.workers):
        return "memory"
    if cfg.blend == "overlap":
        why = "with dask workers" if fits else f"beyond --memory-budget ({latent_memory_bytes(cfg, plans, channels) / 1e9:.1f} GB needed)"
        raise UserError(f"--blend overlap keeps its latents in one process's memory and cannot run {why}; use gridshift")
    return "disk"


@contextmanager
def replacing(out: Path, active: bool) -> Iterator[None]:
    """--overwrite: move the old slide aside, restore it if the new run fails, delete it once the new one is done.

    Ctrl-C keeps the new partial slide (resumable) and the old one aside until a run completes.
    """
    backup = out.with_name(f".{out.name}.replaced")
    if active and out.exists():
        if backup.exists():
            shutil.rmtree(backup)
        out.rename(backup)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException:
        if backup.exists():
            shutil.rmtree(out, ignore_errors=True)
            backup.rename(out)
        raise
    if backup.exists():
        shutil.rmtree(backup)


def _setup_model(cfg: RunConfig) -> tuple[RunConfig, Any, Any, Any, list[LevelPlan]]:
    """The run's config with the model's defaults made explicit (steps, tile, guidance, autoguidance, cond_aug, batch size:
    run.json and the resume fingerprint record the values used), device, dtype, model bundle and cascade plan;
    UserError for what the model rules out."""
    from gigagen.models.checkpoint import load_bundle
    from gigagen.models.denoiser import cond_aug_timestep, guidance_weights, pick_device, pick_dtype, sampling_steps

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    bundle = load_bundle(Path(cfg.checkpoint) if cfg.checkpoint else None, device)
    cfg = with_layout(cfg, bundle)
    mc = bundle.config
    tile = cfg.tile or mc.sampling_tile
    if tile % mc.unet.divisor:
        raise UserError(f"tile must be a multiple of {mc.unet.divisor} for this model, not {tile}")
    plans = plan_cascade(cfg.width, cfg.height, mc.level_cells, mc.magnifications, mc.unet.divisor)
    cfg = replace(with_autoguidance(cfg, bundle), tile=tile, cond_aug=cond_aug_timestep(bundle, cfg.cond_aug),
                  guidance=guidance_weights(bundle, cfg.guidance), steps=sampling_steps(bundle, cfg.steps),
                  batch_size=cfg.batch_size or default_batch_size(tile))
    return cfg, device, dtype, bundle, plans


def with_layout(cfg: RunConfig, bundle: Any) -> RunConfig:
    """The run's layout made explicit (run.json and the resume fingerprint record it), and the bundle's configuration
    set to it: --layout sampled drops a fragment layout, --layout fragments adds one with LayoutSpec's defaults to a
    bundle that samples its layout (it needs an exemplar); the file and its identity are unchanged."""
    from gigagen.engine.layout import named_layout
    from gigagen.models.checkpoint import validate_config

    mc = bundle.config
    own = "fragments" if mc.layout is not None else "sampled"
    want = cfg.layout or own
    if want != own:
        new = replace(mc, layout=named_layout(want))
        try:
            validate_config(new)
        except ValueError as exc:
            raise UserError(f"--layout {want}: {exc}") from None
        bundle.config = new
    return replace(cfg, layout=want)


def run_tiling(cfg: RunConfig, mc: Any) -> Tiling:
    """How the run's levels are cut into tiles, from its resolved config (tile, batch size) and the model (divisor)."""
    return Tiling(tile=cfg.tile, mode=cfg.blend, divisor=mc.unet.divisor, stride=cfg.overlap_stride, batch_size=cfg.batch_size, order=cfg.tile_order)


def run_schedules(cfg: RunConfig, runner: Any) -> list[list[StepPlan]]:
    """Each level's DDIM schedule, from the run's resolved per-level step counts."""
    assert cfg.steps is not None  # resolved per level by _setup_model
    return [step_plans(runner.alphas_cumprod, ddim_timesteps(runner.bundle.config.n_train_steps, n)) for n in cfg.steps]


def level_record(plan: LevelPlan, mc: Any) -> dict[str, Any]:
    """A level as run.json and --plan report it: magnification, array shape in cells, how it is held, and
    whether the denoiser samples it or the level decoder reads it off its parent."""
    kind = "pixels" if plan.level in mc.pixel_levels else "latent"
    return {"magnification": plan.magnification, "latent_shape": list(plan.shape), "kind": kind, "cell_px": mc.level_cells[plan.level],
            "channels": mc.level_channels[plan.level], "made_by": made_by(plan.level, mc)}


def made_by(level: int, mc: Any) -> str:
    """What writes a level: the denoiser (the bundle's coarse denoiser at its levels; with its expert from a timestep
    on), or at the decoded level the level decoder (with its noise and its nucleus stamps, if any), or exemplar
    synthesis guided by it, or at the layout level of a bundle with a fragment layout, fragments of the exemplar."""
    if level == mc.fragment_level:
        return f"fragments of the exemplar at 1/{mc.layout_zoom} of its size, encoded"
    if level != mc.decoded_level:
        if mc.expert_at(level):
            return f"denoiser, its expert from timestep {mc.expert_from}"
        return "coarse denoiser" if mc.samples_coarse(level) else "denoiser"
    if mc.exemplar is not None:
        return f"exemplar synthesis ({mc.exemplar.height}x{mc.exemplar.width} px exemplar) guided by the level decoder"
    extras = [f"{mc.level_decoder_noise} noise channels"] if mc.level_decoder_noise else []
    extras += ["nucleus stamps"] if mc.nucleus_stamps is not None else []
    return "level decoder" + (" with " + " and ".join(extras) if extras else "")


def is_written(level: int, mc: Any) -> bool:
    """Whether a level is written rather than sampled: a decoded level, or the layout level of a fragment layout."""
    return level in (mc.decoded_level, mc.fragment_level)


def sampled_plans(plans: list[LevelPlan], mc: Any) -> list[LevelPlan]:
    """The levels the denoiser samples: all but the written ones (is_written)."""
    return [p for p in plans if not is_written(p.level, mc)]


def with_autoguidance(cfg: RunConfig, bundle: Any) -> RunConfig:
    """The run's autoguidance weight made explicit (run.json and the resume fingerprint record the value
    used), checked against the model before anything is written."""
    from gigagen.models.denoiser import autoguidance_weight

    return replace(cfg, autoguidance=autoguidance_weight(bundle, cfg.autoguidance))


def generate(cfg: RunConfig, progress: ProgressFactory = no_progress, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Generate (or resume) one slide into cfg.out; returns the run record (also written to run.json)."""
    from gigagen.models.denoiser import BundleRunner

    validate(cfg)
    out = Path(cfg.out)
    if cfg.resume:
        done = _already_complete(out)
        if done is not None:
            log(f"{out} is already complete; nothing to resume")
            return done
    else:
        check_output(out, cfg.overwrite)
    cfg, device, dtype, bundle, plans = _setup_model(cfg)
    mc = bundle.config
    tiling = run_tiling(cfg, mc)
    precision = str(dtype).replace("torch.", "")
    fp = fingerprint(cfg, bundle.identity, precision, device.type)
    root = cfg.state_store or default_state_root(out.resolve())
    if cfg.resume:
        if not out.is_dir():
            raise UserError(f"nothing to resume: {out} does not exist")
        state = load_state(root, fp)
        if state.store_kind == "memory" and (cfg.scheduler or cfg.workers):
            raise UserError("this run keeps its latents in one process's memory; resume it without --workers or --scheduler")
        disk_need = 0
    else:
        kind = choose_store(cfg, plans, mc.level_channels)
        disk_need = check_resources(cfg, out, plans, mc.level_channels, kind)
        state = RunState(root, fp, kind)
    if not mc.trained:
        log("warning: this model is an untrained random placeholder; the slide will not look like tissue")
    runner = BundleRunner(bundle, device, dtype, cfg.guidance, cfg.autoguidance, cfg.cond_aug)
    steps = run_schedules(cfg, runner)
    job = Job(cfg, out, runner, tiling, plans, steps, state)
    record: dict[str, Any] = {
        "generator": "gigagen", "synthetic": True, "status": "generating", "config": cfg.as_dict(),
        "seed": cfg.seed, "width": cfg.width, "height": cfg.height, "mpp": mc.mpp0,
        "model": {"identity": bundle.identity, "name": mc.name, "trained": mc.trained, "checkpoint": cfg.checkpoint or "embedded default"},
        "device": str(device), "precision": precision, "versions": versions(), "latent_store": state.store_kind,
        "levels": [level_record(p, mc) | {"level": p.level} for p in plans],
        "estimated_disk_bytes": disk_need,
    }
    with replacing(out, active=cfg.overwrite), _farm(cfg, job):
        return _run(job, record, progress)


@contextmanager
def _farm(cfg: RunConfig, job: Job) -> Iterator[None]:
    if not (cfg.scheduler or cfg.workers):
        yield
        return
    from gigagen.farm import Farm

    with Farm.connect(cfg.scheduler, cfg.workers, job) as farm:
        job.farm = farm
        yield


def _already_complete(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "complete" and not (out / ".gigagen-state").exists() else None


def _run(job: Job, record: dict[str, Any], progress: ProgressFactory) -> dict[str, Any]:
    from gigagen.io.omezarr import create_slide, open_writer

    cfg, out, state = job.cfg, job.out, job.state
    timings = Timings()
    t_start = time.perf_counter()
    if cfg.resume:
        writer = open_writer(out / "slide.ome.zarr")
        record["resumed_from_stages"] = list(state.stages)
    else:
        out.mkdir(parents=True)
        attrs = {k: record[k] for k in ("generator", "synthetic", "seed", "width", "height", "mpp")}
        attrs |= {"version": __version__, "model": record["model"]["identity"]}
        writer = create_slide(out / "slide.ome.zarr", cfg.width, cfg.height, record["mpp"], attrs, chunk=PIXEL_CHUNK)
        state.save()
        _write_json(out / "run.json", record)

    if not state.done("decode"):
        final = _sample(job, progress, timings)
        with timings.stage("decode"):
            _decode(job, final, writer, progress)
        state.mark("decode")
    if not state.done("pyramid"):
        with timings.stage("pyramid"):
            bar = progress("pyramid", writer.pyramid_chunk_count(), "chunk")
            writer.build_pyramid(bar.update)
            bar.close()
        state.mark("pyramid")
    writer.finish({"status": "complete"})
    if cfg.formats and not state.done("export"):
        _export(cfg, out, progress, timings)
        state.mark("export")
    c = job.runner.counters
    record |= {"status": "complete", "network_evaluations": _evaluations(job, c)}
    timings.stages["total"] = round(time.perf_counter() - t_start, 3)
    record["timings_s"] = timings.stages
    _write_json(out / "run.json", record)
    remove_tree(state.root)
    return record


def _evaluations(job: Job, c: Any) -> dict[str, Any]:
    decode_calls = c.decode_calls  # this process's: the layout image, a decoded level, the slide without a farm
    if job.farm is not None:
        c = job.farm.counters
        decode_calls += c.decode_calls
    # the levels the denoiser samples (a decoded level costs decoder passes only)
    area = sum(len(job.steps[p.level]) * p.shape[0] * p.shape[1] for p in sampled_plans(job.plans, job.runner.bundle.config))
    return {
        "unet_calls": c.unet_calls, "unet_tiles": c.unet_tiles, "unet_latent_pixels": c.unet_pixels,
        "per_latent_pixel_per_step": round(c.unet_pixels / area, 4) if not job.cfg.resume else None,
        "decode_calls": decode_calls,
        "guide_tiles": c.guide_tiles, "guide_latent_pixels": c.guide_pixels,
    }


def _sample(job: Job, progress: ProgressFactory, timings: Timings) -> Any:
    """The cascade with one progress bar per level; the layout level is saved as layout.png."""
    cfg, plans, state = job.cfg, job.plans, job.state
    bars: dict[str, Any] = {}
    n_levels, n_steps = len(plans), tuple(len(s) for s in job.steps)
    mc = job.runner.bundle.config

    def start(plan: LevelPlan, store: Any) -> None:
        if is_written(plan.level, mc):
            n = n_steps[plan.level]
            total = 0 if store.completed() >= n else len(level_tiles(store.spec, n))
            kind = "decode" if plan.level == mc.decoded_level else "layout"
        else:
            total = tiles_per_level(store.spec, n_steps[plan.level], store.completed())
            kind = "layout" if plan.level == n_levels - 1 else "refine"
        bars["bar"] = progress(f"{kind} {plan.magnification:g}x", total, "tile")
        bars["t0"] = time.perf_counter()

    def done(plan: LevelPlan, store: Any) -> None:
        bars["bar"].close()
        timings.stages[f"level{plan.level}_{plan.magnification:g}x"] = round(time.perf_counter() - bars["t0"], 3)
        if plan.level == n_levels - 1:
            _save_layout(job, store.view(n_steps[plan.level]), plan)

    def on_tiles(n: int) -> None:
        bars["bar"].update(n)

    denoise = _denoiser(job, on_tiles)
    make_store = (lambda spec: MemoryStore(spec, state.root)) if state.store_kind == "memory" else (lambda spec: DiskStore(spec, state.root))
    store = sample_cascade(
        plans, channels=mc.level_channels, n_steps=n_steps, seed=cfg.seed, tiling=job.tiling,
        denoise=denoise, make_store=make_store, cond_noise=job.runner.cond_noise, on_level_start=start, on_level_done=done,
    )
    return store.view(n_steps[0])


def _denoiser(job: Job, on_tiles: Callable[[int], None]) -> DenoiseFn:
    """Every level's sampler: the farm's or this process's denoiser, the level decoder at a decoded level (run here
    even with a farm: it is one decoder pass over a level 16x smaller than the slide), and a fragment layout's
    renderer at the layout level (here too: that level has 1/256 of the slide's pixels)."""
    if job.farm is not None:
        denoise = job.farm.denoiser(job.steps, job.cfg.eta, on_tiles)
    else:
        denoise = local_denoiser(job.runner.model_fn, job.steps, job.cfg.eta, on_tiles)
    mc, k = job.runner.bundle.config, job.runner.bundle.config.decoded_level

    def decode(store: Any, parent: Any, factor: int) -> None:
        assert k is not None
        stamps = (mc.nucleus_stamps, job.cfg.seed, k) if mc.nucleus_stamps is not None else None
        exemplar = (job.runner.exemplar_bank(), mc.exemplar, job.cfg.seed, k) if mc.exemplar is not None else None
        decode_level(store, parent, job.runner.level_decode_fn, ae_factor=mc.ae.factor, cell=mc.level_cells[k],
                     scale=mc.level_scales[k], halo=mc.ae.decode_halo, n_steps=len(job.steps[k]), on_tiles=on_tiles,
                     stamps=stamps, noise=mc.level_noise(job.cfg.seed), exemplar=exemplar)

    def layout(store: Any, parent: Any, factor: int) -> None:
        top = mc.fragment_level
        assert top is not None and mc.layout is not None
        write_layout_level(store, job.runner.layout_exemplar(), mc.layout, job.runner.encode_fn_at(top),
                           mc.level_cells[top], len(job.steps[top]), on_tiles)

    return with_written_level(with_written_level(denoise, k, decode), mc.fragment_level, layout)


def _decode(job: Job, latent: Any, writer: Any, progress: ProgressFactory) -> None:
    cfg = job.cfg
    f, halo = job.runner.bundle.config.ae.factor, job.runner.bundle.config.ae.decode_halo
    tiles = decode_tiles(cfg.height, cfg.width, PIXEL_CHUNK)
    bar = progress(f"decode {job.plans[0].magnification:g}x", len(tiles), "tile")
    if job.farm is not None:
        job.farm.decode(latent, tiles, f, str((job.out / "slide.ome.zarr").resolve()), bar.update)
    else:
        for tile, rgb in stream_decode(latent, job.runner.decode_fn, f, cfg.height, cfg.width, PIXEL_CHUNK, halo=halo):
            writer.write_tile(tile.y0, tile.x0, rgb)
            bar.update(1)
    bar.close()


def _save_layout(job: Job, latent: Any, plan: LevelPlan) -> None:
    """Decode the layout level chunk by chunk and save it cropped to the slide's field of view."""
    from PIL import Image

    scale = job.plans[0].magnification / plan.magnification
    h, w = max(1, round(job.cfg.height / scale)), max(1, round(job.cfg.width / scale))
    img = np.empty((h, w, 3), dtype=np.uint8)
    ae = job.runner.bundle.autoencoder(plan.level).cfg  # the coarse autoencoder's, in a bundle with one
    for tile, rgb in stream_decode(latent, job.runner.decode_fn_at(plan.level), ae.factor, h, w, PIXEL_CHUNK, halo=ae.decode_halo):
        img[tile.y0 : tile.y1, tile.x0 : tile.x1] = np.moveaxis(rgb, 0, -1)
    Image.fromarray(img).save(job.out / "layout.png")


def _export(cfg: RunConfig, out: Path, progress: ProgressFactory, timings: Timings) -> None:
    from gigagen.io.export import export_slide

    bars: dict[str, Any] = {}

    def report(fmt: str, done: int, total: int) -> None:
        if fmt not in bars:
            bars[fmt] = (progress(f"export {fmt}", total, "tile"), [0])
        bar, seen = bars[fmt]
        bar.update(done - seen[0])
        seen[0] = done

    with timings.stage("export"):
        # overwrite: a file of this slide's own earlier, interrupted export may exist on resume
        export_slide(out, formats=cfg.formats, compression=cfg.compression, quality=cfg.quality, progress=report, overwrite=True)
    for bar, _ in bars.values():
        bar.close()


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)


def plan_run(cfg: RunConfig) -> dict[str, Any]:
    """`gigagen slide --plan`: the run's estimated disk, memory, evaluations and time; generates nothing."""
    from gigagen.models.denoiser import BundleRunner
    from gigagen.plan import calibrate, evaluations, exemplar_seconds, layout_seconds, predict_seconds

    validate(cfg)
    cfg, device, dtype, bundle, plans = _setup_model(cfg)
    mc = bundle.config
    kind = choose_store(cfg, plans, mc.level_channels)
    est = estimate(cfg, plans, mc.level_channels, kind)
    to_sample = sampled_plans(plans, mc)
    evals = evaluations(cfg, to_sample, cfg.tile, mc.unet.divisor, mc.guide_levels)
    runner = BundleRunner(bundle, device, dtype, cfg.guidance, cfg.autoguidance, cfg.cond_aug)
    steps = run_schedules(cfg, runner)
    sampled = [p.level for p in to_sample]
    tiling = run_tiling(cfg, mc)
    calib = calibrate(runner, cfg, tiling, steps, sampled, PIXEL_CHUNK // mc.ae.factor)
    k = mc.decoded_level
    read_off = plans[k + 1].shape if k is not None else (0, 0)  # the latent a decoded level is read off
    decoded = read_off[0] * read_off[1]
    seconds = predict_seconds(cfg, plans, calib, tiling, mc.level_channels, mc.ae.factor, decoded)
    if cfg.workers:
        seconds = {k: v / cfg.workers if k != "pyramid_and_export" else v for k, v in seconds.items()}
        seconds["total"] = seconds["sampling"] + seconds["decode"] + seconds["pyramid_and_export"]
    if mc.exemplar is not None:  # synthesised here even with a farm, like every decoded level
        seconds["exemplar"] = exemplar_seconds(runner, (read_off[0] * mc.ae.factor, read_off[1] * mc.ae.factor), EXEMPLAR_GROUP_PX)
        seconds["total"] += seconds["exemplar"]
    if mc.layout is not None:  # rendered here even with a farm, like the exemplar level
        top = plans[-1]
        seconds["layout"] = layout_seconds(runner, level_tiles(level_spec(top, mc.level_channels, cfg.seed, tiling), len(steps[top.level])))
        seconds["total"] += seconds["layout"]
    return {
        "width": cfg.width, "height": cfg.height, "steps": cfg.steps, "blend": cfg.blend, "model": bundle.identity,
        "levels": [level_record(p, mc) for p in plans],
        "latent_store": kind, "disk_bytes": est["disk"], "peak_memory_bytes": est["peak_memory_bytes"],
        "network_evaluations": evals, "seconds_on_this_machine": {k: round(v, 1) for k, v in seconds.items()},
        "calibration": calib,
    }

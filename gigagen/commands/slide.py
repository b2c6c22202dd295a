"""`gigagen slide`: generate one synthetic H&E whole-slide image."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

from gigagen.config import FORMATS, LAYOUTS, RunConfig, comma_floats, comma_ints, parse_bytes
from gigagen.engine.grid import BLEND_MODES
from gigagen.errors import UserError
from gigagen.models.header import DEFAULT_WEIGHTS, bundle_metadata, guidance_per_level, steps_per_level


def _formats(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))


def embedded_defaults(path: Path = DEFAULT_WEIGHTS) -> dict[str, str]:
    """The embedded model's levels and sampling defaults as help text, read from its file's header alone (no torch
    import: --help stays instant), so the help cannot go stale when the default model is replaced; "?" when the
    file is missing or unreadable."""
    try:
        cfg = bundle_metadata(path)
        mags = [f"{m:g}x" for m in cfg["magnifications"]]
        return {"levels": ",".join(mags), "refined": ",".join(mags[:-1]),
                "steps": ",".join(str(n) for n in steps_per_level(cfg["steps"], len(mags))),
                "guidance": ",".join(f"{w:g}" for w in guidance_per_level(cfg["guidance"], len(mags))),
                "autoguidance": f"{cfg['autoguidance']:g}", "layout": "fragments" if cfg.get("layout") else "sampled"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {key: "?" for key in ("levels", "refined", "steps", "guidance", "autoguidance", "layout")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = embedded_defaults()
    p = sub.add_parser("slide", help="generate a synthetic H&E slide", description=__doc__)
    size = p.add_argument_group("size (pixels at 20x, 0.5 um/px)")
    size.add_argument("--size", type=int, help="width and height of a square slide (e.g. 4096)")
    size.add_argument("--width", type=int, help="width (overrides --size)")
    size.add_argument("--height", type=int, help="height (overrides --size)")
    p.add_argument("--out", help="output slide directory (default: slides/gigagen-TIMESTAMP-sSEED)")
    p.add_argument("--seed", type=int, help="random seed (default: random, recorded in run.json)")
    p.add_argument("--steps", type=comma_ints, default=None, metavar="N[,N...]",
                   help=f"DDIM denoising steps per level, finest first ({d['levels']} for the embedded model), or one number "
                        f"for every level (default: the model's, {d['steps']} for the embedded model)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like (default 0)")
    p.add_argument("--guidance", type=comma_floats, default=None, metavar="W[,W...]",
                   help=f"classifier-free guidance weight per refinement level, finest first ({d['refined']} for the embedded model), "
                        f"or one weight for every level; 1 = one pass (default: the model's, {d['guidance']} for the "
                        "embedded model)")
    p.add_argument("--autoguidance", type=float, default=None,
                   help="autoguidance weight: the model's small guide network steers away from its errors; 1 = off, "
                        f"one pass (default: the model's, {d['autoguidance']} for the embedded model)")
    p.add_argument("--cond-aug", type=int, default=None, metavar="T",
                   help="noise each parent level to this timestep before a level is refined (conditioning augmentation; "
                        "only for models trained with it); 0 = the parent as sampled (default: the model's)")
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="the layout level: sampled by the model, or made of fragments of its exemplar (models with an "
                        f"exemplar only; BundleConfig.layout) (default: the model's, {d['layout']} for the embedded model)")
    p.add_argument("--blend", default="gridshift", help=f"tile blending: {', '.join(BLEND_MODES)} (default gridshift)")
    p.add_argument("--overlap-stride", type=int, help="latent stride of --blend overlap windows (default tile/2)")
    p.add_argument("--tile", type=int, help="latent tile side (default: the model's sampling tile, else its training tile)")
    p.add_argument("--checkpoint", help="model bundle (.safetensors; default: the embedded model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (default auto = bf16)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per network call; never changes the result (default: 32768 latent pixels per call, 32 tiles of 32 or 2 of 128)")
    p.add_argument("--formats", default="ome-tiff,dzi", help=f"files to write besides the zarr: comma list of {', '.join(FORMATS)}, or none (default ome-tiff,dzi: slide.ome.tif for QuPath and slide.dzi.zip, Deep Zoom tiles the viewer serves as they are)")
    p.add_argument("--compression", default="jpeg", help="TIFF compression: jpeg, or lossless deflate, zstd, lzw, none (default jpeg)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of TIFF and Deep Zoom tiles (default 90)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing slide at --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (same arguments) from its last completed step")
    p.add_argument("--memory-budget", default="256MiB", help="latents kept in memory up to this size, beyond it in per-tile files on disk (default 256MiB)")
    p.add_argument("--plan", action="store_true", help="print the estimated disk, memory, network evaluations and time, and exit")
    farm = p.add_argument_group("distributed (dask)")
    farm.add_argument("--scheduler", help="tcp://HOST:PORT of a running dask scheduler to farm tiles out to")
    farm.add_argument("--workers", type=int, default=0, help="start a local dask cluster with N worker processes")
    farm.add_argument("--state-store", help="latent state location every worker can reach: a shared path or fsspec URL (default SLIDE/.gigagen-state)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    p.add_argument("--tile-order", default="raster", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    width = args.width if args.width is not None else args.size
    height = args.height if args.height is not None else args.size
    if width is None or height is None:
        raise UserError("give --size N, or --width W and --height H")
    if args.resume and (args.seed is None or args.out is None):
        raise UserError("--resume needs the same --out and --seed as the interrupted run")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    out = args.out or time.strftime(f"slides/gigagen-%Y%m%d-%H%M%S-s{seed}")
    return RunConfig(
        width=width, height=height, out=out, seed=seed, steps=args.steps, eta=args.eta, guidance=args.guidance,
        autoguidance=args.autoguidance, cond_aug=args.cond_aug, layout=args.layout, blend=args.blend, overlap_stride=args.overlap_stride, tile=args.tile, checkpoint=args.checkpoint,
        device=args.device, precision=args.precision, batch_size=args.batch_size, overwrite=args.overwrite,
        formats=_formats(args.formats), compression=args.compression.lower(), quality=args.quality,
        tile_order=args.tile_order, resume=args.resume, memory_budget=parse_bytes(args.memory_budget),
        scheduler=args.scheduler, workers=args.workers, state_store=args.state_store,
    )


def _tqdm_factory(quiet: bool):
    from tqdm import tqdm

    def make(desc: str, total: int, unit: str):
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet, dynamic_ncols=True, leave=True)

    return make


def _print_plan(plan: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(plan))
        return
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    d, ev, sec = plan["disk_bytes"], plan["network_evaluations"], plan["seconds_on_this_machine"]
    print(f"slide        {plan['width']}x{plan['height']} px at 20x, steps {','.join(map(str, plan['steps']))}, blend {plan['blend']}, model {plan['model']}")
    print("levels       " + ", ".join(f"{lv['magnification']:g}x {lv['kind']} {lv['latent_shape'][0]}x{lv['latent_shape'][1]}"
                                      + (" (decoded)" if lv["made_by"].startswith("level decoder") else "")
                                      + (" (fragments)" if lv["made_by"].startswith("fragments") else "") for lv in plan["levels"]))
    print(f"disk         {gb(d['total'])} at most (zarr {gb(d['zarr'])}, tiffs {gb(d['tiffs'])}, latent state {gb(d['latent_state'])})")
    print(f"memory       {gb(plan['peak_memory_bytes'])} peak resident (latents {plan['latent_store']})")
    guide = f" (+ {ev['guide_tiles']} of the smaller autoguidance network)" if ev["guide_tiles"] else ""
    print(f"network      {ev['unet_tiles']} UNet tile evaluations, {ev['unet_latent_pixels']} latent pixels{guide}")
    extra = "".join(f", {name} {sec[key]:.0f}" for key, name in (("exemplar", "exemplar synthesis"), ("layout", "fragment layout"))
                    if key in sec)
    print(f"time         {sec['total']:.0f} s on this machine (sampling {sec['sampling']:.0f}, decode {sec['decode']:.0f}{extra}, "
          f"pyramid+export {sec['pyramid_and_export']:.0f})")


def _resume_hint() -> str:
    argv = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    return "gigagen " + " ".join(argv) + " --resume"


def run(args: argparse.Namespace) -> int:
    from gigagen.pipeline import generate, plan_run

    cfg = config_from_args(args)
    if args.plan:
        _print_plan(plan_run(cfg), args.json)
        return 0
    log = lambda msg: print(f"gigagen slide: {msg}", file=sys.stderr)  # noqa: E731
    try:
        record = generate(cfg, progress=_tqdm_factory(args.quiet), log=log)
    except KeyboardInterrupt:
        print(f"\ngigagen slide: interrupted; continue with: {_resume_hint()}", file=sys.stderr)
        return 130
    if record.get("status") == "complete" and "timings_s" not in record:
        record["timings_s"] = {"total": 0.0}
    summary = {
        "out": cfg.out, "width": cfg.width, "height": cfg.height, "seed": cfg.seed, "blend": cfg.blend,
        "steps": record["config"]["steps"], "model": record["model"]["identity"], "trained_model": record["model"]["trained"],
        "seconds": record["timings_s"]["total"],
        "evaluations_per_latent_pixel_per_step": record.get("network_evaluations", {}).get("per_latent_pixel_per_step"),
    }
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(f"gigagen slide: wrote {cfg.out} ({cfg.width}x{cfg.height}, seed {cfg.seed}) in {summary['seconds']:.1f} s", file=sys.stderr)
    return 0

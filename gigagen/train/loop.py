"""`gigagen train`: the autoencoder first, then one denoiser on every cascade level (nanoGPT-style flat loop).

Phase "ae": L1 + SSIM + FFT reconstruction of crops at every magnification. Phase "unet": the EMA
autoencoder encodes every training image at every level in all 8 dihedral orientations once; the
UNet then learns v-prediction (Salimans & Ho 2022) on latent crops: level 0 (20x) conditioned on
level 1 (5x) via cond_for_region over the whole parent latent (exactly as at inference), level 1 on
level 2, and the layout level unconditioned; conditioning is dropped 10% of the time for CFG.
bf16 autocast (never fp16), EMA weights, checkpoints every few minutes and on Ctrl-C, resumable.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gigagen.engine.condition import NoiseField, augment, cond_for_region, cond_noise_std
from gigagen.engine.decode import stream_decode
from gigagen.engine.levels import cond_factors, fold, level_cells, level_scales, level_zooms
from gigagen.engine.nuclei import StampSpec, fit_spec, stamp
from gigagen.errors import UserError
from gigagen.models.checkpoint import BundleConfig, load_bundle, read_bundle_config, save_bundle, save_like
from gigagen.models.denoiser import BundleRunner
from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder, AutoencoderConfig, Decoder
from gigagen.sampling.schedules import cosine_alphas_cumprod
from gigagen.train import data as D
from gigagen.train import metrics as M
from gigagen.train.distill import distill_plan, distill_record, teacher_runner, teacher_target
from gigagen.train.losses import ae_loss


@dataclass
class TrainConfig:
    inputs: list[str]
    out: str  # run directory: state.pt, bundle.safetensors, loss.csv, loss.png
    mpp: float | None = None  # pixel size of the inputs when their files lack it
    name: str = "gigagen-model"
    holdout_frac: float = 0.2  # bottom band of every input, never trained on
    max_minutes: float = 60.0  # wall time of this invocation
    ae_minutes: float = 32.0  # total autoencoder training time (across resumes)
    ae: AutoencoderConfig = field(default_factory=lambda: AutoencoderConfig(base_ch=16, ch_mult=(1, 2, 4, 8), latent_ch=12))
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(latent_ch=12, base_ch=64, ch_mult=(1, 2, 2), num_res_blocks=1))
    magnifications: tuple[float, ...] = (20.0, 5.0, 1.25)
    mpp0: float = 0.5
    ae_crop: int = 128
    ae_batch: int = 8
    ae_lr: float = 6e-4
    tile: int = 32  # latent tile side at the refinement levels
    layout_tile: int = 16  # the layout level's latent is small (a region gives few 1.25x pixels)
    unet_batch: int = 16
    unet_lr: float = 4e-4
    level_probs: tuple[float, ...] = (0.5, 0.3, 0.2)  # = default_level_probs(3)
    cfg_dropout: float = 0.1
    ema: float = 0.999
    jitter: float = 0.05
    min_tissue: float = 0.25
    checkpoint_minutes: float = 4.0
    decoder_every: int = 4  # during the denoiser phase, one decoder-only step every N denoiser steps (0 = off)
    ae_max_steps: int | None = None  # optional step limits (tests, exact reproductions)
    unet_max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "bf16"  # autoencoder training: bf16 autocast or fp32 (fp16 is never offered)
    unet_precision: str = "bf16"  # denoiser training (bf16 measured 2.4x faster than fp32 on this CPU)
    threads: int | None = None
    init_autoencoder: str | None = None  # bundle whose autoencoder is reused (its training is then skipped)
    init_from: str | None = None  # bundle whose autoencoder and denoiser are both reused: the denoiser trains on
    guide_of: str | None = None  # train a small guide denoiser for this bundle (autoguidance); export bundle + guide
    autoguidance: float = 1.5  # with guide_of: the autoguidance weight recorded as the bundle's default
    warmup_steps: int = 200  # linear LR warm-up of a fresh denoiser optimizer (new runs and --init-from)
    lr_decay_minutes: float = 0.0  # the denoiser LR falls linearly to 10% over this run's last minutes (0 = constant)
    decoder_of: str | None = None  # fine-tune this bundle's decoder adversarially (gigagen.train.gan_decoder)
    gan_adv: float = 0.2  # weight of the adversarial loss against reconstruction (1) and anchor (1)
    gan_anchor_pool: int = 16  # px: decoded samples keep the original decoder's block means at this scale
    gan_lr: float = 1e-4  # decoder LR (the discriminator's is twice this)
    gan_bank_seeds: int = 2  # sampled latents per training image and orientation
    gan_max_steps: int | None = None
    gan_mix: float = 0.5  # exported decoder = (1 - mix) original + mix fine-tuned (WiSE-FT)
    gan_paired: tuple[int, ...] = ()  # timesteps: the bank also holds SDEdit samples from the real latent (see gan_decoder)
    gan_refine: int = 0  # grow the decoder by a full-resolution refiner of this many channels first (0: do not)
    decoder_level: int | None = None  # with decoder_of: tune a level decoder that reads this pixel level off the latent above
    decoder_noise: int = 0  # with decoder_level: the level decoder reads this many noise channels too (see gan_decoder)
    decoder_kl: float = 0.05  # with decoder_noise: weight of KL(posterior noise || N(0, 1)) per noise element
    scale_aug: tuple[float, ...] = ()  # extra pixel-size scales at which the denoiser's latents are encoded
    elastic_aug: int = 0  # elastically deformed copies of each training part the denoiser also learns from
    elastic_strain: float = D.ELASTIC_STRAIN  # their control-point displacement std per spacing (data.elastic_field)
    coarse_warps: int = 0  # deformations at COARSE_WARP_SPACINGS that only the levels above the finest learn from
    coarse_warp_strain: float = D.ELASTIC_STRAIN  # their displacement std per spacing
    sample_tile: int | None = None  # recorded as the bundle's default sampling tile (None: carried, else `tile`)
    cond_aug_max: int = 0  # conditioning augmentation: parents noised to a timestep drawn from 0..this (0 = off)
    cond_aug: int | None = None  # the conditioning noise timestep recorded for sampling (None: carried, else 0)
    guidance: tuple[float, ...] | None = None  # CFG weights per refinement level recorded for sampling (None: carried, else 1)
    early_stop: int = 0  # stop the denoiser after this many held-out validations without a new best (0 = never)
    pixel_levels: tuple[int, ...] = ()  # levels the denoiser learns as folded pixels, not latents (gigagen.engine.levels)
    input_perturbation: float = 0.0  # gamma of Ning et al. 2023: x_t gets (1 + gamma^2) times the noise variance, the target not
    decoded_parents: bool = False  # with init_from a decoded-level bundle: that level's pixels are its level decoder's reading
    nucleus_stamps: bool = False  # with decoded_parents: that reading carries stamps at the real nucleus centres (engine.nuclei)
    sampled_parents: tuple[int, ...] = ()  # t0s: the finest level also learns from 5x parents init_from samples from layouts (or 5x levels: sampled_parents_from) redrawn from these
    sampled_parent_prob: float = 0.5  # with sampled_parents: the share of finest-level crops given a sampled parent
    sampled_parents_from: str = "layout"  # with sampled_parents: what is redrawn from t0, "layout" or "parent" (sampled_parents.SOURCES)
    distill: bool = False  # with init_from: learn that bundle's guided output in one pass (gigagen.train.distill)
    level_blur: tuple[float, ...] | None = None  # Gaussian sigma per level before encoding (BundleConfig.level_blur); None: carried, else none
    t_range: tuple[int, int] = (0, 1000)  # the denoiser learns (and is validated) at timesteps lo..hi-1 only: an expert for that part of the schedule
    # a bundle whose autoencoder holds, and whose denoiser samples, every level above the finest (BundleConfig.coarse_ae):
    # the run trains only the finest level's denoiser, in its own autoencoder's latent, on parents in that bundle's latent
    coarse_from: str | None = None
    coarse_ae: AutoencoderConfig | None = None  # that bundle's autoencoder configuration (set with coarse_from)

    @property
    def cells(self) -> tuple[int, ...]:
        """Cell side in pixels of every level's array, finest first (as BundleConfig.level_cells)."""
        coarse = self.coarse_ae.factor if self.coarse_ae is not None else None
        return level_cells(self.ae.factor, self.ae.latent_ch, len(self.magnifications), self.pixel_levels, coarse)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def default_level_probs(n_levels: int) -> tuple[float, ...]:
    """Share of training crops per level, finest first: 50/30/20% for three levels, else 40% for the
    finest and the rest shared equally."""
    return (0.5, 0.3, 0.2) if n_levels == 3 else (0.4,) + (0.6 / (n_levels - 1),) * (n_levels - 1)


def checked_zooms(magnifications: tuple[float, ...]) -> tuple[int, ...]:
    """The cascade's zoom from each level to its parent (gigagen.engine.levels.level_zooms), or a UserError."""
    try:
        return level_zooms(tuple(magnifications))
    except ValueError as exc:
        raise UserError(str(exc)) from None


Reads = list[tuple[np.ndarray, float]]  # each input as read: (RGB, its pixel size in um)


def read_inputs(cfg: TrainConfig) -> Reads:
    """Every input read once (a run builds several variants of each from these)."""
    return [D.read_image(path, cfg.mpp) for path in cfg.inputs]


# Coarse warps (--coarse-warps) bend the tissue at 4x the spacings of the default warps (D.ELASTIC_SPACINGS),
# so at 5x they move structures as the default warps move them at 20x: new arrangements of the one region for
# the levels that have least data (a 5x training part is about 550 x 590 px).
COARSE_WARP_SPACINGS = (256, 1024)


def load_training_levels(cfg: TrainConfig, scale: float = 1.0, part: int = 0, warp: int = 0,
                         reads: Reads | None = None, coarse: bool = False) -> list[D.LevelImages]:
    """Every input at mpp0, its held-out band removed, as aligned magnification levels.

    Levels are downsampled by the cascade's zoom factor (4 for 20x/5x/1.25x), the same factor the
    conditioning uses; the autoencoder's factor only sets the alignment (whole latent pixels).
    `scale` resamples the input first (scale augmentation: 1.15 draws the tissue 15% larger, as a
    scanner with a smaller pixel would); `part` 1 gives the held-out bands instead, skipping inputs
    whose band is too small for the cascade. `warp` k > 0 deforms each training part elastically
    (D.elastic_warp, drawn from the run's seed, the input and k) before the levels are built, so the
    coarser levels stay the warped image's own; with `coarse`, deformation k is one of the coarse warps
    (COARSE_WARP_SPACINGS, cfg.coarse_warp_strain, drawn from a seed of their own). `reads` are the inputs
    already read (`read_inputs`).
    """
    out = []
    for i, (rgb, mpp) in enumerate(reads if reads is not None else read_inputs(cfg)):
        rgb = D.resize(rgb, mpp / cfg.mpp0 * scale)  # one resampling per variant, scale included
        img = D.split_holdout(rgb, cfg.holdout_frac)[part]
        if warp:
            tag, spacings, strain = (0xC0A5, COARSE_WARP_SPACINGS, cfg.coarse_warp_strain) if coarse else \
                (0xE1A5, D.ELASTIC_SPACINGS, cfg.elastic_strain)
            img = D.elastic_warp(img, np.random.default_rng([cfg.seed, tag, i, warp]), spacings, strain)
        try:
            out.append(D.build_levels(img, checked_zooms(cfg.magnifications), max(cfg.cells)))  # whole cells at every level
        except UserError:
            if part == 0:
                raise
    return out


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer,
                   ema_model: torch.nn.Module, ema: float, step: int) -> None:
    """Backward, clip to norm 1, step, then update the EMA copy (decay warmed up over the first steps)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema_model, model, min(ema, (1 + step) / (10 + step)))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)


class Logger:
    """Loss rows to CSV (appending across resumes) and a PNG plot at every checkpoint."""

    def __init__(self, run: Path) -> None:
        self.path = run / "loss.csv"
        new = not self.path.exists()
        self.f = open(self.path, "a", newline="")
        self.w = csv.writer(self.f)
        if new:
            self.w.writerow(["wall_s", "phase", "step", "loss", "extra"])

    def row(self, wall: float, phase: str, step: int, loss: float, extra: dict[str, float]) -> None:
        self.w.writerow([f"{wall:.1f}", phase, step, f"{loss:.5f}", json.dumps({k: round(v, 5) for k, v in extra.items()})])

    def flush(self) -> None:
        self.f.flush()
        plot_losses(self.path, self.path.with_suffix(".png"))


def plot_losses(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    phases = [p for p in ("ae", "unet", "gan") if any(r["phase"] == p for r in rows)] or ["ae", "unet"]
    val = [r for r in rows if r["phase"].startswith("val_")]
    fig, axes = plt.subplots(1, len(phases) + bool(val), figsize=(4.5 * (len(phases) + bool(val)), 3.2), squeeze=False)
    if val:
        plot_validation(axes[0][-1], val)
    for ax, phase in zip(axes[0], phases):
        ys = np.array([float(r["loss"]) for r in rows if r["phase"] == phase])
        if len(ys):
            k = max(1, len(ys) // 50)
            smooth = np.convolve(ys, np.ones(k) / k, mode="valid")
            ax.plot(ys, alpha=0.3, lw=0.5)
            ax.plot(np.arange(len(smooth)) + k - 1, smooth)
            ax.set_yscale("log")
        ax.set_title(f"{phase} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


def plot_validation(ax: Any, rows: list[dict[str, str]]) -> None:
    """Held-out (solid) and training (dashed) validation loss per level (v, or a distillation run's match to its teacher) against the step."""
    curves: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in rows:
        curves.setdefault((r["phase"][4:], int(json.loads(r["extra"])["level"])), []).append((int(r["step"]), float(r["loss"])))
    for (split, level), pts in sorted(curves.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "-" if split == "held" else "--", marker=".", label=f"{split}, level {level}", color=f"C{level}")
    ax.set_title("validation loss (EMA)")
    ax.set_xlabel("denoiser step")
    ax.legend(fontsize=7)


@dataclass
class State:
    """Everything a resumed run needs."""

    ae: Autoencoder
    ae_ema: Autoencoder
    unet: UNet
    unet_ema: UNet
    opt_ae: torch.optim.Optimizer
    opt_unet: torch.optim.Optimizer
    ae_step: int = 0
    unet_step: int = 0
    ae_seconds: float = 0.0
    unet_seconds: float = 0.0
    latent_scale: float = 0.0
    pixel_scale: float = 0.0  # the pixel levels' (0 until measured; see BundleConfig.pixel_scale)
    ae_source: str = ""  # bundle the autoencoder came from (--init-autoencoder), kept across resumes
    unet_source: str = ""  # bundle the denoiser continued from (--init-from), kept across resumes
    guide_of: str = ""  # bundle this run trains a guide for (--guide-of), kept across resumes
    # what an --init-from run keeps of its bundle beyond the two networks: "guide" (its autoguidance
    # network, config and weight) and "record" (training-record entries that stay true), see carry_over
    carried: dict[str, Any] = field(default_factory=dict)
    # held-out validation: the best score so far, its step, and validations since it (early stopping)
    val_best: float = math.inf
    val_best_step: int = 0
    val_stale: int = 0
    val_last_step: int = -1

    def save(self, path: Path, cfg: TrainConfig) -> None:
        blob = {k: getattr(self, k).state_dict() for k in ("ae", "ae_ema", "unet", "unet_ema", "opt_ae", "opt_unet")}
        blob |= {k: getattr(self, k) for k in ("ae_step", "unet_step", "ae_seconds", "unet_seconds", "latent_scale", "pixel_scale", "ae_source", "unet_source", "guide_of", "carried")}
        blob |= {k: getattr(self, k) for k in ("val_best", "val_best_step", "val_stale", "val_last_step")}
        blob["config"] = dataclasses.asdict(cfg)
        save_atomic(blob, path)


def save_atomic(blob: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash mid-write never leaves a half state."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def new_state(cfg: TrainConfig, device: torch.device) -> State:
    ae, unet = Autoencoder(cfg.ae).to(device), UNet(cfg.unet).to(device)
    return State(
        ae, copy.deepcopy(ae).requires_grad_(False), unet, copy.deepcopy(unet).requires_grad_(False),
        torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=0.0),
        torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0),
    )


def _resolved(path: str | None) -> str:
    """One file however it is named (relative, absolute, through links); '' for none."""
    return str(Path(path).resolve()) if path else ""


def load_state(path: Path, cfg: TrainConfig, device: torch.device) -> State:
    if not path.is_file():
        raise UserError(f"--resume: no training state at {path}")
    blob = torch.load(path, map_location=device, weights_only=False)
    if blob.get("decoder_of"):
        raise UserError(f"--resume: {path} belongs to a --decoder-of {blob['decoder_of']} run; resume it with that option")
    kept = blob.get("config", {}).get("coarse_from")  # before the weights: its denoiser reads another parent
    if _resolved(kept) != _resolved(cfg.coarse_from):
        want = f"--coarse-from {kept}" if kept else "no --coarse-from"
        raise UserError(f"--resume: {path} belongs to a run with {want}; resume it with the same option")
    st = new_state(cfg, device)
    # a denoiser that has not trained yet may be resized on resume (the autoencoder is kept)
    keys = ("ae", "ae_ema", "opt_ae") + (("unet", "unet_ema", "opt_unet") if blob["unet_step"] else ())
    try:
        for k in keys:
            getattr(st, k).load_state_dict(blob[k])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"--resume: {path} does not match the model configuration ({str(exc).splitlines()[0]})") from None
    for k in ("ae_step", "unet_step", "ae_seconds", "unet_seconds", "latent_scale"):
        setattr(st, k, blob[k])
    st.pixel_scale = blob.get("pixel_scale", 0.0)  # runs from before pixel levels have none
    st.ae_source = blob.get("ae_source", "")
    st.unet_source = blob.get("unet_source", "")
    st.guide_of = blob.get("guide_of", "")
    st.carried = blob.get("carried", {})
    for k, default in (("val_best", math.inf), ("val_best_step", 0), ("val_stale", 0), ("val_last_step", -1)):
        setattr(st, k, blob.get(k, default))
    if bool(st.carried.get("level_decoder")) != cfg.decoded_parents:
        raise UserError(f"--resume: {path} belongs to a run {'with' if st.carried.get('level_decoder') else 'without'} --decoded-parents; resume it the same way")
    if ("nucleus_stamps" in st.carried) != cfg.nucleus_stamps:
        raise UserError(f"--resume: {path} belongs to a run {'with' if 'nucleus_stamps' in st.carried else 'without'} --nucleus-stamps; resume it the same way")
    kept = st.carried.get("level_blur")
    if cfg.level_blur is not None and kept is not None and tuple(cfg.level_blur) != tuple(kept):
        raise UserError(f"--resume: {path} belongs to a run with --level-blur {','.join(f'{v:g}' for v in kept) or 'none'}; "
                        "its latents and carried networks follow that smoothing (leave --level-blur out to keep it)")
    kept = st.carried.get("sampled_parents", "unrecorded")  # runs from before the check recorded nothing
    if kept != "unrecorded" and kept != sampled_spec(cfg):
        said = (f"--sampled-parents {','.join(map(str, kept['t0']))} --sampled-parent-prob {kept['prob']:g} "
                f"--sampled-parents-from {kept['from']}") if kept else "no --sampled-parents"
        raise UserError(f"--resume: {path} belongs to a run with {said}; resume it with the same options")
    kept = tuple(blob.get("config", {}).get("t_range", (0, 1000)))  # runs from before the option learned every timestep
    if kept != tuple(cfg.t_range):
        raise UserError(f"--resume: {path} belongs to a run with --t-range {kept[0]},{kept[1]}; resume it with the same option")
    if _resolved(st.guide_of) != _resolved(cfg.guide_of):
        want = f"--guide-of {st.guide_of}" if st.guide_of else "no --guide-of"
        raise UserError(f"--resume: {path} belongs to a run with {want}; resume it with the same option")
    return st


def init_autoencoder(st: State, path: Path, cfg: TrainConfig, device: torch.device) -> None:
    """Start from a bundle's (EMA) autoencoder; with `ae_source` set the autoencoder phase is skipped,
    so retraining a denoiser does not pay for the autoencoder again."""
    bundle = load_bundle(path, device)
    if bundle.config.ae != cfg.ae:
        raise UserError(f"--init-autoencoder: {path} has autoencoder {bundle.config.ae}, not the configured {cfg.ae}")
    _take_autoencoder(st, bundle, path.name)


def _take_autoencoder(st: State, bundle: Any, name: str) -> None:
    """The bundle's autoencoder weights and step/minute record into both training copies."""
    for m in (st.ae, st.ae_ema):
        m.load_state_dict(bundle.ae.state_dict())
    st.ae_step = int(bundle.config.training.get("ae_step", 0))
    st.ae_seconds = float(bundle.config.training.get("ae_minutes", 0.0)) * 60  # the record stays true
    st.ae_source = name


def level_map(old: tuple[float, ...], new: tuple[float, ...], old_pixels: tuple[int, ...] = (),
              new_pixels: tuple[int, ...] = ()) -> list[int]:
    """For each level of a new cascade, the level of an old one whose embedding it starts from: the
    layout level from the old layout level, a refinement level from the old refinement level nearest
    in log-magnification (ties: one held the same way, latents or pixels, then the finer one)."""
    refine = range(len(old) - 1) if len(old) > 1 else range(1)
    out = [min(refine, key=lambda j: (round(abs(math.log(old[j] / m)), 9), (j in old_pixels) != (k in new_pixels), j))
           for k, m in enumerate(new[:-1])]
    return out + [len(old) - 1]


def parents_read_alike(old: BundleConfig, cfg: TrainConfig, mapping: list[int]) -> bool:
    """Whether every refinement level of the new cascade has a parent held as its old level's parent was
    (latents or pixels), so the stem's weights on the parent still read it."""
    return all((k + 1 in cfg.pixel_levels) == (j + 1 in old.pixel_levels)
               for k, j in enumerate(mapping[:-1]) if j < len(old.magnifications) - 1)


def sampled_spec(cfg: TrainConfig) -> dict[str, Any] | None:
    """The run's sampled-parent options as its state keeps them (None: off)."""
    if not cfg.sampled_parents:
        return None
    return {"t0": list(cfg.sampled_parents), "prob": cfg.sampled_parent_prob, "from": cfg.sampled_parents_from}


def init_from_bundle(st: State, path: Path, cfg: TrainConfig, device: torch.device) -> None:
    """Continue training a bundle's denoiser, possibly on other data or another cascade: both networks
    start from the bundle's EMA weights and keep its latent scale, so its latents stay valid; with other
    magnifications the level embeddings are carried over by `level_map`. The optimizer is new (hence
    the LR warm-up) and the training record carries the bundle's step and minute counts on."""
    bundle = load_bundle(path, device)
    old_mags = tuple(bundle.config.magnifications)
    # dropout has no weights; conditioning augmentation adds one zero-initialised layer (UNet.cond_aug_emb) and
    # head blocks start as the identity (UNet.head), so a network may gain both and start out unchanged
    old_unet = bundle.config.unet
    same = dataclasses.replace(old_unet, n_levels=cfg.unet.n_levels, dropout=cfg.unet.dropout, cond_aug=cfg.unet.cond_aug,
                               head_blocks=cfg.unet.head_blocks)
    if (bundle.config.ae != cfg.ae or same != cfg.unet or (old_unet.cond_aug and not cfg.unet.cond_aug)
            or old_unet.head_blocks > cfg.unet.head_blocks):
        raise UserError(f"--init-from: {path} has models {bundle.config.ae}, {old_unet}, not the configured ones")
    if bundle.config.mpp0 != cfg.mpp0 or old_mags[0] != cfg.magnifications[0]:
        raise UserError(f"--init-from: {path} was trained at {old_mags[0]}x / {bundle.config.mpp0} um/px, not {cfg.magnifications[0]}x / {cfg.mpp0}")
    rec = bundle.config.training
    _take_autoencoder(st, bundle, rec.get("autoencoder_from", path.name))
    weights = bundle.unet.state_dict()
    mapping = level_map(old_mags, tuple(cfg.magnifications), tuple(bundle.config.pixel_levels), tuple(cfg.pixel_levels))
    weights["level_emb.weight"] = weights["level_emb.weight"][mapping]
    grown = [f"head.{i}." for i in range(old_unet.head_blocks, cfg.unet.head_blocks)]
    for m in (st.unet, st.unet_ema):
        missing, unexpected = m.load_state_dict(weights, strict=False)
        if unexpected or any(not k.startswith(("cond_aug_emb.", *grown)) for k in missing):
            raise UserError(f"--init-from: {path}'s denoiser weights do not fit its configuration")
    st.unet_step = int(rec.get("unet_step", 0))
    st.unet_seconds = float(rec.get("unet_minutes", 0.0)) * 60
    st.latent_scale = float(bundle.config.latent_scale)
    if pixel_mags(bundle.config.magnifications, bundle.config.pixel_levels) == pixel_mags(cfg.magnifications, cfg.pixel_levels):
        st.pixel_scale = float(bundle.config.pixel_scale)  # pixels of the same magnifications: the same scale
    if not parents_read_alike(bundle.config, cfg, mapping):  # how the network read its parents is void
        forget_parents(st.unet, st.unet_ema)
    st.unet_source = path.name
    st.carried = carry_over(bundle, path.name, cfg)
    if cfg.distill:
        take_distill_plan(st, bundle, path, cfg)


def take_distill_plan(st: State, bundle: Any, path: Path, cfg: TrainConfig) -> None:
    """--distill: the bundle becomes the run's teacher (kept in the state, so --resume finds it), and the student
    bundle samples with one pass per tile: no guide and guidance 1, its guided sampling learnt instead."""
    if tuple(bundle.config.magnifications) != tuple(cfg.magnifications) or tuple(bundle.config.pixel_levels) != tuple(cfg.pixel_levels):
        raise UserError(f"--distill: the student learns {path}'s levels as its teacher samples them; keep its magnifications and pixel levels")
    plan = distill_plan(bundle, path)
    st.carried["distill"] = plan
    st.carried.pop("guide", None)  # its work is now the student's
    st.carried["guidance"] = ()
    st.carried["record"].pop("guide", None)
    st.carried["record"]["distilled"] = distill_record(plan)


def pixel_mags(magnifications: tuple[float, ...], pixel_levels: tuple[int, ...]) -> list[float]:
    """The magnifications a cascade holds as pixels (what its pixel scale was measured on)."""
    return sorted(float(magnifications[k]) for k in pixel_levels)


def forget_parents(*unets: UNet) -> None:
    """Zero the stem's weights on the conditioning channels: a network whose parents are now held another way
    (--pixel-levels) starts as if it saw no parent, instead of misreading the new one, and learns to read it from
    there (measured on the default given 5x pixels: held-out 20x v-loss 1.12 misreading them, 0.80 with these
    weights zeroed; 0.37 with its latent parent, 0.24 after 50 minutes on the pixels)."""
    with torch.no_grad():
        for unet in unets:
            unet.stem.weight[:, unet.cfg.latent_ch :] = 0


def carry_over(bundle: Any, name: str, cfg: TrainConfig) -> dict[str, Any]:
    """What of an --init-from bundle stays valid beside its continued denoiser. Its guide: a guide learns
    on the same latents (encoder and latent scale, both kept) and does not depend on the main denoiser, so
    it goes on guiding the same levels with the same weight, unless the cascade changes; its coarse network
    (BundleConfig.coarse) the same way, sampling the same levels. Its fine-tuned
    decoder's record ("decoder_gan"), until a decoder step (--decoder-every) retrains that decoder. Its
    sampling tile, conditioning noise, guidance weights and steps per level, measured on the network that now
    trains on (--sample-tile, --cond-aug and --guidance replace theirs), and its level smoothing (--level-blur replaces
    it, and then the guide and coarse network, which learnt the old smoothing, are not carried). Not its level decoder (BundleConfig.decoded_level):
    tuned on the old denoiser's samples, it is dropped, and the continued bundle samples that level by diffusion
    until a new one is tuned (--decoder-of B --decoder-level K); unless cfg.decoded_parents, where the run learns
    the level below from that very decoder's readings, and keeps it (frozen) with its record. Not its expert
    (BundleConfig.expert): split from the old main network for the high-noise steps, it would sample them for a
    main network that no longer matches it; scripts/set_expert.py can give the continued bundle one again."""
    c, rec = bundle.config, bundle.config.training
    out: dict[str, Any] = {"record": {}, "sample_tile": c.sample_tile, "cond_aug": c.cond_aug,  # how it samples best
                           "level_blur": tuple(c.level_blur)}
    same_levels = tuple(c.magnifications) == tuple(cfg.magnifications) and tuple(c.pixel_levels) == tuple(cfg.pixel_levels)
    # a guide or coarse network learnt its levels from the bundle's smoothing of them; another smoothing leaves them out of step
    same_parents = same_levels and (cfg.level_blur is None or tuple(cfg.level_blur) == tuple(c.level_blur))
    if same_levels:  # per-level weights and steps only mean something for the same levels, held the same way
        out["guidance"], out["steps"] = tuple(c.guidance), tuple(c.steps)
    if "decoder_gan" in rec:
        out["record"]["decoder_gan"] = rec["decoder_gan"]
    if cfg.decoded_parents:
        if bundle.level_decoder is None:
            raise UserError(f"--decoded-parents: {name} reads no level with a level decoder")
        out["level_decoder"] = {"level": c.decoded_level, "weights": bundle.level_decoder.state_dict()}
        out["record"]["level_decoder_gan"] = rec.get("level_decoder_gan", {})
        if cfg.nucleus_stamps:  # the stamps its denoiser learnt from, or None: fitted when the denoiser phase starts
            out["nucleus_stamps"] = c.nucleus_stamps.to_dict() if c.nucleus_stamps is not None else None
    if bundle.guide is not None and same_parents:  # a guide conditions on the parents it learned
        out["guide"] = {"config": dataclasses.asdict(c.guide), "autoguidance": c.autoguidance,
                        "levels": list(c.guide_levels), "weights": bundle.guide.state_dict()}
        out["record"]["guide"] = rec.get("guide", {}) | {"carried_from": name}
    if bundle.coarse is not None and same_parents:  # like the guide: same latents, the parents it learned
        out["coarse"] = {"config": dataclasses.asdict(c.coarse), "levels": list(c.coarse_levels), "weights": bundle.coarse.state_dict()}
        out["record"]["coarse"] = rec.get("coarse", {}) | {"carried_from": name}
    return out


def carried_coarse(st: State) -> tuple[UNet | None, dict[str, Any]]:
    """The coarse network an --init-from run carries (see carry_over), rebuilt, and its BundleConfig fields."""
    c = st.carried.get("coarse")
    if not c:
        return None, {}
    net = carried_unet(c)
    return net, {"coarse": net.cfg, "coarse_levels": tuple(c["levels"])}


def carried_unet(carried: dict[str, Any]) -> UNet:
    """A UNet that carry_over kept as its config and weights, rebuilt (asdict kept the config's tuples: torch.save
    pickles, no JSON)."""
    net = UNet(UNetConfig(**carried["config"]))
    net.load_state_dict(carried["weights"])
    return net


def carried_guide(st: State) -> tuple[UNet | None, dict[str, Any]]:
    """The guide an --init-from run carries (see carry_over), rebuilt for export, and the BundleConfig
    fields that name it; (None, {}) if none."""
    g = st.carried.get("guide")
    if not g:
        return None, {}
    guide = carried_unet(g)
    return guide, {"guide": guide.cfg, "autoguidance": g["autoguidance"], "guide_levels": tuple(g["levels"])}


def init_guide(st: State, bundle: Any, path: Path, cfg: TrainConfig) -> None:
    """--guide-of: the new (small) denoiser learns on the bundle's latents exactly: its autoencoder and its
    latent scale are taken and never trained, so the guide and the bundle's denoiser see the same inputs."""
    c = bundle.config
    if c.ae != cfg.ae or tuple(c.magnifications) != tuple(cfg.magnifications) or c.mpp0 != cfg.mpp0 or c.tile != cfg.tile:
        raise UserError(f"--guide-of: {path} does not match the run's autoencoder, magnifications, mpp or tile")
    _take_autoencoder(st, bundle, path.name)
    st.latent_scale = float(c.latent_scale)
    st.guide_of = str(path)


def guide_record(st: State, cfg: TrainConfig) -> dict[str, Any]:
    return {"unet_step": st.unet_step, "unet_minutes": round(st.unet_seconds / 60, 1), "unet_batch": cfg.unet_batch,
            "level_probs": list(cfg.level_probs), "seed": cfg.seed} | augmentation_record(cfg)


def augmentation_record(cfg: TrainConfig) -> dict[str, Any]:
    """The data augmentations a run trained with, as its bundle records them."""
    out: dict[str, Any] = {}
    if cfg.scale_aug:
        out["scale_aug"] = list(cfg.scale_aug)
    if cfg.elastic_aug:
        out["elastic_aug"] = cfg.elastic_aug
        out["elastic_strain"] = cfg.elastic_strain
    if cfg.coarse_warps:
        out["coarse_warps"] = {"n": cfg.coarse_warps, "strain": cfg.coarse_warp_strain, "spacings_px": list(COARSE_WARP_SPACINGS)}
    return out


def adam_steps(opt: torch.optim.Optimizer) -> int:
    """Steps this optimizer has taken (0 when new): Adam keeps the count with each parameter's state."""
    for state in opt.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def denoiser_lr(opt: torch.optim.Optimizer, base_lr: float, warmup_steps: int, seconds_left: float, decay_seconds: float) -> float:
    """Linear warm-up over a fresh optimizer's first steps (Adam's first updates have size ~lr in every
    direction, which would knock a pretrained denoiser, --init-from, off its minimum), then constant,
    then a linear decay to 10% over the run's last `decay_seconds` (warmup-stable-decay: a time-bounded
    run ends annealed, whenever its deadline falls). Sets and returns the LR."""
    lr = base_lr * min(1.0, (adam_steps(opt) + 1) / max(warmup_steps, 1))
    if decay_seconds > 0:
        lr *= 0.1 + 0.9 * min(1.0, max(seconds_left, 0.0) / decay_seconds)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def export_bundle(path: Path, cfg: TrainConfig, st: State, record: dict[str, Any], main: Any = None, coarse: Any = None) -> None:
    """EMA weights + config as the safetensors bundle `gigagen slide --checkpoint` loads. A guide run
    (--guide-of, `main` = that bundle) writes the guided bundle whole, with this run's denoiser as its guide. A
    --coarse-from run (`coarse` = that bundle) writes its denoiser and autoencoder for the finest level beside the
    bundle's autoencoder and denoiser for every coarser level (coarse_cascade)."""
    if main is not None:
        training = main.config.training | {"guide": guide_record(st, cfg) | {"guide_of": Path(st.guide_of).name}}
        levels = tuple(i for i, share in enumerate(cfg.level_probs) if share > 0)  # a guide guides what it learned
        gcfg = dataclasses.replace(main.config, guide=cfg.unet, autoguidance=cfg.autoguidance, guide_levels=levels, training=training,
                                   sample_tile=cfg.sample_tile or main.config.sample_tile,
                                   cond_aug=main.config.cond_aug if cfg.cond_aug is None else cfg.cond_aug,
                                   guidance=main.config.guidance if cfg.guidance is None else cfg.guidance)
        save_like(path, main, gcfg, guide=st.unet_ema)
        return
    guide, guide_fields = carried_guide(st)
    coarse_net, coarse_fields = carried_coarse(st) if coarse is None else (coarse.unet, coarse_cascade(coarse.config))
    if coarse is None:
        guidance, steps = st.carried.get("guidance", ()), st.carried.get("steps", ())
    else:  # the coarser levels sample as in that bundle (the finest level's network is new: unguided)
        guidance, steps = (1.0,) + coarse.config.guidance_per_level[1:], coarse.config.steps
    bcfg = BundleConfig(
        name=cfg.name, ae=cfg.ae, unet=cfg.unet, prediction="v", latent_scale=float(st.latent_scale or 1.0),
        magnifications=tuple(cfg.magnifications), mpp0=cfg.mpp0, tile=cfg.tile, trained=st.unet_step > 0,
        sample_tile=cfg.sample_tile or st.carried.get("sample_tile"), training=record | st.carried.get("record", {}), **guide_fields,
        cond_aug=st.carried.get("cond_aug", 0) if cfg.cond_aug is None else cfg.cond_aug,
        guidance=guidance if cfg.guidance is None else cfg.guidance, steps=steps, level_blur=run_blur(cfg, st, None),
        pixel_levels=tuple(cfg.pixel_levels), pixel_scale=float(st.pixel_scale or 1.0),
        decoded_level=st.carried["level_decoder"]["level"] if "level_decoder" in st.carried else None,
        nucleus_stamps=StampSpec.from_dict(st.carried["nucleus_stamps"]) if st.carried.get("nucleus_stamps") else None,
        **coarse_fields,
    )
    save_bundle(path, bcfg, st.ae_ema, st.unet_ema, guide, carried_level_decoder(st, cfg), coarse_net,
                coarse_ae=None if coarse is None else coarse.ae)


def coarse_cascade(c: BundleConfig) -> dict[str, Any]:
    """The BundleConfig fields with which a --coarse-from run's bundle keeps bundle `c`'s coarser levels: `c`'s denoiser as
    the coarse network at every level above the finest, `c`'s autoencoder holding them at its latent scale."""
    return {"coarse": c.unet, "coarse_levels": tuple(range(1, len(c.magnifications))), "coarse_ae": c.ae,
            "coarse_latent_scale": c.latent_scale}


def load_coarse(cfg: TrainConfig, device: torch.device) -> Any:
    """The --coarse-from bundle (None without one), checked to still be the autoencoder the run was configured with."""
    if not cfg.coarse_from:
        return None
    coarse = load_bundle(Path(cfg.coarse_from), device)
    if coarse.config.ae != cfg.coarse_ae or tuple(coarse.config.magnifications) != tuple(cfg.magnifications):
        raise UserError(f"--coarse-from: {cfg.coarse_from} no longer has the autoencoder and levels this run learns its parents in")
    return coarse


def run_blur(cfg: TrainConfig, st: State, guided: Any) -> tuple[float, ...]:
    """The smoothing sigma per level a run applies to real images before encoding them (BundleConfig.level_blur): a
    guide run's bundle's (a guide must learn the parents that bundle's denoiser learnt), else --level-blur, else
    an --init-from bundle's (carry_over), else none."""
    if guided is not None:
        own = tuple(guided.config.level_blur)
        if cfg.level_blur is not None and tuple(cfg.level_blur) != own:
            raise UserError(f"--level-blur: a --guide-of run keeps its bundle's ({list(own) or 'none'})")
        return own
    return tuple(cfg.level_blur) if cfg.level_blur is not None else tuple(st.carried.get("level_blur", ()))


def carried_level_decoder(st: State, cfg: TrainConfig) -> Decoder | None:
    """The level decoder a --decoded-parents run keeps (see carry_over), rebuilt; None if none."""
    ld = st.carried.get("level_decoder")
    if not ld:
        return None
    decoder = Decoder(cfg.ae)
    decoder.load_state_dict(ld["weights"])
    return decoder


def parent_reread(st: State, cfg: TrainConfig, guided: Any, device: torch.device) -> tuple[int, Reader] | None:
    """(decoded level, level_reader) when this run learns from a level decoder's readings: a --decoded-parents run
    (with its nucleus stamps, if any), or a guide for a bundle trained so (a guide must see the inputs its denoiser
    saw); else None."""
    if guided is not None:
        c = guided.config
        if not c.training.get("decoded_parents"):
            return None
        k = c.decoded_level
        return k, level_reader(st.ae_ema, guided.level_decoder, device, c.nucleus_stamps,
                               round(c.magnifications[0] / c.magnifications[k]), c.mpp0)
    decoder = carried_level_decoder(st, cfg)
    if decoder is None:
        return None
    k = st.carried["level_decoder"]["level"]
    spec = st.carried.get("nucleus_stamps")
    return k, level_reader(st.ae_ema, decoder, device, StampSpec.from_dict(spec) if spec else None,
                           round(cfg.magnifications[0] / cfg.magnifications[k]), cfg.mpp0)


Reader = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]  # (level image, finest image) -> what the level is read as


def level_reader(ae: Autoencoder, decoder: Decoder, device: torch.device, stamps: StampSpec | None = None,
                 fine: int = 4, fine_mpp: float = 0.5) -> Reader:
    """(H, W, 3) uint8 -> the same image as `gigagen slide` makes a decoded level: encoded (bf16, as training
    encodes), read back by the level decoder (bf16 autocast, as BundleRunner) in halo'd chunks, rounded to uint8
    (as the slide's store holds it). With `stamps`, a stamp is painted at each real nucleus centre, found on the
    finest level's image of the same variant (`fine` times larger, `fine_mpp` um/px): where a slide paints
    sampled ones (engine.nuclei)."""
    decoder = copy.deepcopy(decoder).requires_grad_(False).eval().to(device=device, memory_format=torch.channels_last)

    @torch.no_grad()
    def decode(z: np.ndarray) -> np.ndarray:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return decoder(torch.from_numpy(z).to(device)).float().clamp(-1, 1).cpu().numpy()

    def read(rgb: np.ndarray, finest: np.ndarray | None = None) -> np.ndarray:
        z = encode_image(ae, rgb, device, torch.bfloat16)
        out = np.empty_like(rgb)
        for tile, px in stream_decode(z, decode, ae.cfg.factor, rgb.shape[0], rgb.shape[1], halo=ae.cfg.decode_halo):
            out[tile.y0 : tile.y1, tile.x0 : tile.x1] = px.transpose(1, 2, 0)
        if stamps is None:
            return out
        assert finest is not None, "stamps need the finest level's image"
        return stamp(out, M.nucleus_centres(finest, fine_mpp) / fine, stamps)

    return read


def fit_stamps(levels: list[D.LevelImages], level: int, read: Reader, cfg: TrainConfig) -> StampSpec:
    """engine.nuclei.fit_spec on the training images as they are (no orientation, jitter or warp): the level's
    readings without stamps, and the real nucleus centres found at the finest level."""
    fine = round(cfg.magnifications[0] / cfg.magnifications[level])
    readings = [read(li.images[level], None) for li in levels]
    centres = [M.nucleus_centres(li.images[0], cfg.mpp0) / fine for li in levels]
    if not sum(len(c) for c in centres):
        raise UserError("--nucleus-stamps: no nucleus-like objects found in the training images at the finest level")
    return fit_spec(readings, centres, mpp=cfg.mpp0 * fine)


def ae_batch(levels: list[D.LevelImages], cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """(B, 3, crop, crop) in [-1, 1]: random image, level, tissue crop, dihedral, stain jitter."""
    out = []
    for _ in range(cfg.ae_batch):
        li = levels[int(rng.integers(len(levels)))]
        k = int(rng.choice(len(li.images), p=np.array(cfg.level_probs) / sum(cfg.level_probs)))
        img, mask = li.images[k], li.masks[k]
        size = min(cfg.ae_crop, img.shape[0], img.shape[1])  # a smaller coarse level is padded to the crop below
        y, x = D.sample_crop(img, mask, size, rng, cfg.min_tissue if rng.random() < 0.8 else 0.0)
        crop = D.stain_jitter(D.dihedral(img[y : y + size, x : x + size], int(rng.integers(8))), rng, cfg.jitter)
        if size < cfg.ae_crop:  # coarse levels smaller than a crop: pad with background white
            crop = np.pad(crop, ((0, cfg.ae_crop - size), (0, cfg.ae_crop - size), (0, 0)), constant_values=255)
        out.append(crop)
    return torch.from_numpy(D.to_tensor_range(np.stack(out)))


@torch.no_grad()
def encode_image(ae: Autoencoder, rgb: np.ndarray, device: torch.device, dtype: torch.dtype, chunk: int = 512, margin: int = 64) -> np.ndarray:
    """(H, W, 3) uint8 -> (C, H/f, W/f) latent, encoded in overlapping chunks (bounded memory)."""
    f = ae.cfg.factor
    h, w = rgb.shape[:2]
    out = np.zeros((ae.cfg.latent_ch, h // f, w // f), np.float32)
    x_all = D.to_tensor_range(rgb)
    for y0 in range(0, h, chunk):
        for x0 in range(0, w, chunk):
            a0, b0 = max(y0 - margin, 0), max(x0 - margin, 0)
            a1, b1 = min(y0 + chunk + margin, h), min(x0 + chunk + margin, w)
            x = torch.from_numpy(np.ascontiguousarray(x_all[:, a0:a1, b0:b1]))[None].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                z = ae.encode(x).float()[0].cpu().numpy()
            ly, lx = (y0 - a0) // f, (x0 - b0) // f
            hh, ww = min(chunk, h - y0) // f, min(chunk, w - x0) // f
            out[:, y0 // f : y0 // f + hh, x0 // f : x0 // f + ww] = z[:, ly : ly + hh, lx : lx + ww]
    return out


def level_array(bundle: Any, rgb: np.ndarray, level: int, device: torch.device = torch.device("cpu")) -> np.ndarray:
    """An (H, W, 3) image as the bundle's denoiser sees it at `level`: smoothed as the bundle says (level_blur),
    then its latent (encoded in bounded chunks, by the autoencoder that holds that level: ModelBundle.autoencoder) or, at
    a pixel level, its folded pixels; times that level's scale."""
    c = bundle.config
    rgb = D.blurred(rgb, c.blur_at(level))  # the bundle's smoothing of that level, as its denoiser learnt it
    if level in c.pixel_levels:
        return fold(D.to_tensor_range(rgb), c.level_cells[level]) * c.level_scales[level]
    return encode_image(bundle.autoencoder(level), np.ascontiguousarray(rgb), device, torch.bfloat16) * c.level_scales[level]


@dataclass
class LatentSet:
    """Latents of every (image, orientation) at every level, scaled; tissue masks at latent resolution."""

    latents: list[list[np.ndarray]]  # [variant][level] -> (C, h_k, w_k)
    masks: list[list[np.ndarray]]  # [variant][level] -> (h_k, w_k) bool

    def scaled(self, scale: float | tuple[float, ...]) -> "LatentSet":
        """The same latents times the bundle's latent scale, or one scale per level (BundleConfig.level_scales):
        the units the denoiser works in."""
        scales = scale if isinstance(scale, tuple) else (scale,) * len(self.latents[0])
        return LatentSet([[z * k for z, k in zip(v, scales)] for v in self.latents], self.masks)

    def extended(self, more: "LatentSet") -> "LatentSet":
        """These variants, then `more`'s (the first variants keep their indices)."""
        return LatentSet(self.latents + more.latents, self.masks + more.masks)


def encode_all(levels: list[D.LevelImages], ae: Autoencoder, cfg: TrainConfig, device: torch.device, dtype: torch.dtype,
               log: Callable[[str], None], orientations: int = 8,
               reread: tuple[int, Reader] | None = None, skip_finest: bool = False, blur: tuple[float, ...] = (),
               coarse_ae: Autoencoder | None = None) -> LatentSet:
    """Every image in its first `orientations` dihedral orientations (the first unjittered, the others
    stain-jittered); variant i is image i // orientations in orientation i % orientations; each level smoothed by
    its `blur` sigma (BundleConfig.level_blur; () = none) after orientation and jitter, before encoding. Pixel levels
    (cfg.pixel_levels) are folded into cells instead of encoded; with `reread` (level K, reader: level_reader),
    level K's pixels are first replaced by the reader's version (its tissue mask stays the real one's; the reader
    also gets the variant's finest image, where nucleus stamps find the real nuclei). With `skip_finest` the
    finest level is left empty (0 x 0), which `unet_batch` never draws: variants for the coarser levels only. With
    `coarse_ae` (a --coarse-from run) every level above the finest is encoded by that autoencoder instead."""
    cells = cfg.cells
    lats, masks = [], []
    rng = np.random.default_rng(cfg.seed + 1)
    for li in levels:
        for k in range(orientations):
            seed = int(rng.integers(2**31))  # the same stain jitter at every level of one variant

            def oriented(img: np.ndarray) -> np.ndarray:
                return D.stain_jitter(D.dihedral(img, k), np.random.default_rng(seed), cfg.jitter if k else 0.0)
            # a skipped finest level is oriented only for a reader (0.45 s per variant at 2220 x 2370 px)
            finest = None if skip_finest and reread is None else oriented(li.images[0])
            vl, vm = [], []
            for level, (img, mask) in enumerate(zip(li.images, li.masks)):
                if skip_finest and level == 0:  # 16x the pixels of the 5x level, and never drawn: not encoded
                    vl.append(np.zeros((cfg.ae.latent_ch, 0, 0), np.float32))
                    vm.append(np.zeros((0, 0), bool))
                    continue
                jittered = finest if level == 0 else oriented(img)
                if blur:  # blurred() leaves a sigma-0 level as it is
                    jittered = D.blurred(jittered, blur[level])
                if reread is not None and level == reread[0]:
                    jittered = reread[1](jittered, finest)
                f = cells[level]
                coder = coarse_ae if coarse_ae is not None and level > 0 else ae
                vl.append(fold(D.to_tensor_range(jittered), f) if level in cfg.pixel_levels else encode_image(coder, jittered, device, dtype))
                vm.append(D.dihedral(mask, k)[f // 2 :: f, f // 2 :: f])
            lats.append(vl)
            masks.append(vm)
        log(f"encoded {len(lats)} image orientations at {len(cfg.magnifications)} levels")
    return LatentSet(lats, masks)


def crop_side(ls: LatentSet, cfg: TrainConfig, level: int) -> int:
    """A level's latent crop side: its tile (the layout tile at the last level), or less when even the
    largest variant is smaller, in whole UNet divisors."""
    tile = cfg.tile if level < len(cfg.magnifications) - 1 else cfg.layout_tile
    return min(tile, max(min(v[level].shape[1:]) for v in ls.latents)) // cfg.unet.divisor * cfg.unet.divisor


def unet_batch(ls: LatentSet, cfg: TrainConfig, level: int, rng: np.random.Generator, side: int | None = None,
               sampled: list[list[np.ndarray]] | None = None) -> tuple[np.ndarray, ...]:
    """(x0, cond, cond_mask, cond_noise) for one level: latent crops of one side (`crop_side` unless given),
    their parent conditioning (scaled latents) and, with conditioning augmentation (cfg.cond_aug_max), white
    noise at the parent's resolution upsampled as the conditioning is (else zeros). Variants too small for
    that side (a scale-augmented image below its level's tile) are not drawn at that level. With `sampled`
    (per variant, sampled versions of its level 1: sampled_parents), a share cfg.sampled_parent_prob of the
    finest level's crops take one of those as their parent instead of the real level 1."""
    n_levels = len(cfg.magnifications)
    factor = cond_factors(tuple(cfg.magnifications), cfg.cells)[level]
    t = side or crop_side(ls, cfg, level)
    fits = [v for v, lat in enumerate(ls.latents) if min(lat[level].shape[1:]) >= t]
    xs, cs, ms, ns = [], [], [], []
    aug = cfg.cond_aug_max > 0

    def white(c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return rng.standard_normal((c, y1 - y0, x1 - x0), dtype=np.float32)

    for _ in range(cfg.unet_batch):
        v = fits[int(rng.integers(len(fits)))]
        lat, mask = ls.latents[v][level], ls.masks[v][level]
        y, x = D.sample_crop(lat.transpose(1, 2, 0), mask, t, rng, cfg.min_tissue if rng.random() < 0.8 else 0.0)
        xs.append(lat[:, y : y + t, x : x + t])
        if level < n_levels - 1:
            parent = ls.latents[v][level + 1]
            if sampled is not None and level == 0 and rng.random() < cfg.sampled_parent_prob:
                parent = sampled[v][int(rng.integers(len(sampled[v])))]
            cs.append(cond_for_region(parent, y, y + t, x, x + t, factor))
            ms.append(0.0 if rng.random() < cfg.cfg_dropout else 1.0)
            ns.append(cond_for_region(NoiseField(parent.shape, white), y, y + t, x, x + t, factor) if aug else np.zeros_like(cs[-1]))
        else:
            cs.append(np.zeros_like(xs[-1]))
            ms.append(0.0)
            ns.append(cs[-1])
    return np.stack(xs), np.stack(cs), np.array(ms, np.float32), np.stack(ns)


def augment_cond(cond: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, abar: torch.Tensor, max_t: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Conditioning augmentation (Ho et al. 2022): each crop's parent is noised to its own timestep drawn
    uniformly from 0..max_t (0 for crops trained without their parent), which the network is told; at
    sampling the same is done at one fixed timestep, so the network learns to take a generated parent's
    errors for noise instead of copying them. (cond, None) when max_t is 0."""
    if max_t <= 0:
        return cond, None
    ct = torch.from_numpy(rng.integers(0, max_t + 1, size=cond.shape[0])).to(cond.device) * (mask > 0.5)
    return augment(cond, noise, cond_noise_std(abar, ct)[:, None, None, None]), ct.float()


def validation_latents(cfg: TrainConfig, ae: Autoencoder, latent_scale: float | tuple[float, ...], train: LatentSet, device: torch.device,
                       log: Callable[[str], None], reads: Reads | None = None,
                       reread: tuple[int, Reader] | None = None, blur: tuple[float, ...] = (),
                       coarse_ae: Autoencoder | None = None) -> dict[str, LatentSet]:
    """The scaled latents validation measures: "train", the training images as they are (unrotated,
    unjittered, scale 1: `train`), and "held", the held-out bands, encoded here the same way (none with
    --holdout-frac 0)."""
    splits = {"train": train}
    held = load_training_levels(cfg, part=1, reads=reads) if cfg.holdout_frac > 0 else []
    if held:
        ls = encode_all(held, ae, cfg, device, torch.bfloat16, lambda _: None, orientations=1, reread=reread, blur=blur,
                        coarse_ae=coarse_ae)
        splits["held"] = ls.scaled(latent_scale)
    else:
        log("no held-out band large enough for validation: no bundle-best.safetensors, no early stopping")
    return splits


VAL_TIMES = (100, 300, 500, 700, 900)  # every validation crop is noised at each of these timesteps
VAL_CROPS = 16  # crops per (split, level)
VAL_SEED = 12345


def val_times(t_range: tuple[int, int]) -> tuple[int, ...]:
    """The validation timesteps a run that learns only t_range is measured at (all of VAL_TIMES normally)."""
    return tuple(t for t in VAL_TIMES if t_range[0] <= t < t_range[1])


@dataclass
class ValSet:
    """Fixed noised latent crops on which the EMA denoiser is measured at every validation: the same
    crops, timesteps and noise each time, so the numbers move only when the denoiser does."""

    sides: dict[int, int]  # level -> crop side, the same for both splits
    batches: dict[tuple[str, int], tuple[torch.Tensor, ...]]  # (split, level) -> (x_t, cond, mask, t, target)


def build_valset(splits: dict[str, LatentSet], cfg: TrainConfig, device: torch.device, teacher: BundleRunner | None = None) -> ValSet:
    """VAL_CROPS crops per split ("held": the held-out bands, "train": the training images, both
    unjittered and unrotated) at every level the run trains, each at every VAL_TIMES timestep. Both
    splits use one crop side per level, the smaller split's (CMU's 5x held-out band is 16 latent pixels
    high, so 16 rather than the training tile 32: the numbers compare checkpoints and splits, not
    training losses); a level where that is under two UNet divisors is left out (CMU's 1.25x band: 4). The
    target is v, or with a distillation `teacher` (gigagen.train.distill.teacher_runner) its guided output."""
    vcfg = dataclasses.replace(cfg, unet_batch=VAL_CROPS, cfg_dropout=0.0, cond_aug_max=0)  # clean parents
    rng = np.random.default_rng(VAL_SEED)  # not the run's seed: runs on the same data validate alike
    gen = torch.Generator().manual_seed(VAL_SEED)
    times = torch.tensor(val_times(cfg.t_range)).repeat_interleave(VAL_CROPS)
    abar = torch.tensor(cosine_alphas_cumprod(1000), dtype=torch.float32, device=device)
    sides = {level: min(crop_side(ls, cfg, level) for ls in splits.values())
             for level, share in enumerate(cfg.level_probs) if share > 0}
    sides = {level: side for level, side in sides.items() if side >= 2 * cfg.unet.divisor}
    out: dict[tuple[str, int], tuple[torch.Tensor, ...]] = {}
    for split, ls in splits.items():
        for level, side in sides.items():
            x0, cond, mask = (torch.from_numpy(a).repeat(len(times) // VAL_CROPS, *([1] * (a.ndim - 1)))
                              for a in unet_batch(ls, vcfg, level, rng, side)[:3])
            eps = torch.randn(x0.shape, generator=gen)
            x0, cond, mask, t, eps = (a.to(device) for a in (x0, cond, mask, times, eps))
            a, s = abar[t].sqrt()[:, None, None, None], (1 - abar[t]).sqrt()[:, None, None, None]
            xt = (a * x0 + s * eps).contiguous(memory_format=torch.channels_last)
            target = a * eps - s * x0 if teacher is None else teacher_targets(teacher, xt, t, level, cond, mask)
            out[(split, level)] = (xt, cond.contiguous(memory_format=torch.channels_last), mask, t, target)
    return ValSet(sides, out)


def teacher_targets(teacher: BundleRunner, xt: torch.Tensor, t: torch.Tensor, level: int, cond: torch.Tensor,
                    mask: torch.Tensor, batch: int = 40) -> torch.Tensor:
    """The distillation teacher's guided output on fixed validation crops, `batch` crops per call."""
    return torch.cat([teacher_target(teacher, xt[i : i + batch], t[i : i + batch], level, cond[i : i + batch], mask[i : i + batch])
                      for i in range(0, len(xt), batch)])


@torch.no_grad()
def noised_pair(x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor, gamma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, v target) for one training step: x_t = a x0 + s eps and v = a eps - s x0 (Salimans & Ho 2022).

    gamma > 0: input perturbation (Ning et al. 2023, "Input perturbation reduces exposure bias in diffusion
    models"): x_t takes eps + gamma xi with a second noise xi, the target still eps alone, so the network
    learns to denoise inputs a little off the training distribution, as its own sampling trajectory is."""
    eps = torch.randn_like(x0)
    noise = eps + gamma * torch.randn_like(x0) if gamma else eps
    return a * x0 + s * noise, a * eps - s * x0


def val_losses(unet: UNet, vs: ValSet, dtype: torch.dtype, batch: int = 40) -> dict[tuple[str, int], float]:
    """Mean loss (the training loss: v, or the distillation target) of `unet`, in eval mode (no dropout), on each
    fixed validation batch."""
    was_training = unet.training
    unet.eval()
    out = {}
    for (split, level), (xt, cond, mask, t, target) in vs.batches.items():
        total = 0.0
        for i in range(0, len(xt), batch):
            sl = slice(i, i + batch)
            lv = torch.full((len(xt[sl]),), level, dtype=torch.long, device=xt.device)
            with torch.autocast(xt.device.type, dtype=dtype, enabled=dtype != torch.float32):
                v = unet(xt[sl], t[sl].float(), lv, cond[sl], mask[sl])
            total += (v.float() - target[sl]).pow(2).sum().item()
        out[(split, level)] = total / target.numel()
    unet.train(was_training)
    return out


def val_score(losses: dict[tuple[str, int], float], level_probs: tuple[float, ...]) -> float | None:
    """The held-out losses averaged with the run's level shares (the training objective's weights);
    None without held-out data."""
    held = {lv: v for (split, lv), v in losses.items() if split == "held"}
    if not held:
        return None
    return sum(level_probs[lv] * v for lv, v in held.items()) / sum(level_probs[lv] for lv in held)


def improved(score: float, best: float) -> bool:
    """A new best is at least 0.1% below the old one (noise-level wiggles do not reset early stopping)."""
    return score < best * (1 - 1e-3)


def decoder_step(st: State, levels: list[D.LevelImages], cfg: TrainConfig, rng: np.random.Generator,
                 device: torch.device, dtype: torch.dtype) -> float:
    """Keep sharpening the decoder while the denoiser trains: the (EMA) encoder is frozen, so the
    latents the denoiser learns stay valid; only the decoder and its EMA change."""
    x = ae_batch(levels, cfg, rng).to(device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        z = st.ae_ema.encode(x).float()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        recon = st.ae.decode(z)
    loss, _ = ae_loss(x, recon, z, w_lat=0.0)
    st.opt_ae.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(st.ae.decoder.parameters(), 1.0)
    st.opt_ae.step()
    st.ae_step += 1
    st.carried.get("record", {}).pop("decoder_gan", None)  # the adversarially tuned decoder is being retrained
    ema_update(st.ae_ema.decoder, st.ae.decoder, min(cfg.ema, 0.995))  # few steps: a shorter average
    return loss.item()


def _sigterm_as_interrupt() -> None:
    """SIGTERM (kill, schedulers) checkpoints like Ctrl-C; background jobs ignore SIGINT."""
    import signal
    import threading

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Run (or continue) training; returns the exported bundle path."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    # bf16 autocast or plain fp32; never fp16, which silently zeroes small gradients. Encoding for the
    # denoiser always runs in bf16, as inference does.
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    run = Path(cfg.out)
    if run.exists() and not resume and (run / "state.pt").exists():
        raise UserError(f"{run} already holds a training run; pass --resume to continue it or choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    st = load_state(run / "state.pt", cfg, device) if resume else new_state(cfg, device)
    # a guide run's bundle, read once: every checkpoint writes it back with the guide beside its denoiser
    guided = load_bundle(Path(cfg.guide_of), device) if cfg.guide_of else None  # load_state checked it is this run's
    coarse = load_coarse(cfg, device)  # --coarse-from: every level above the finest is that bundle's
    if cfg.guide_of and not resume:
        init_guide(st, guided, Path(cfg.guide_of), cfg)
    elif cfg.init_from and not resume:
        init_from_bundle(st, Path(cfg.init_from), cfg, device)
    elif cfg.init_autoencoder and not resume:
        init_autoencoder(st, Path(cfg.init_autoencoder), cfg, device)
    plan = st.carried.get("distill")  # a distillation run (--distill, kept across resumes): its teacher
    if plan and (cfg.guidance is not None or cfg.cond_aug_max):  # a new run is checked by the CLI; --resume here
        raise UserError("--distill: the student samples as its teacher does, in one pass; --guidance and --cond-aug-max do not apply")
    teacher = teacher_runner(plan, device) if plan else None
    decoded = st.carried.get("level_decoder", {}).get("level")
    if decoded is not None and cfg.level_probs[decoded]:  # --resume with other shares; a new run is checked by the CLI
        raise UserError(f"--decoded-parents: level {decoded} is read by the level decoder; give it --level-probs share 0")
    for m in (st.ae, st.ae_ema, st.unet, st.unet_ema):
        m.to(memory_format=torch.channels_last)  # oneDNN's fast convolution layout
    rng = np.random.default_rng([cfg.seed, st.ae_step, st.unet_step])
    reads = read_inputs(cfg)
    levels = load_training_levels(cfg, reads=reads)
    logger = Logger(run)
    _sigterm_as_interrupt()
    t_start = time.monotonic()
    deadline = t_start + cfg.max_minutes * 60
    last_ckpt = time.monotonic()
    record = {"data": [Path(p).name for p in cfg.inputs], "holdout_frac": cfg.holdout_frac, "holdout": "bottom rows band"}
    if st.ae_source:
        record["autoencoder_from"] = st.ae_source
    if st.unet_source:
        record["denoiser_from"] = st.unet_source
    record |= augmentation_record(cfg)
    if cfg.unet.dropout:
        record["unet_dropout"] = cfg.unet.dropout
    if cfg.cond_aug_max:
        record["cond_aug_max"] = cfg.cond_aug_max
    if cfg.input_perturbation:
        record["input_perturbation"] = cfg.input_perturbation
    if cfg.t_range != (0, 1000):
        record["t_range"] = list(cfg.t_range)
    if coarse is not None:
        record["coarse_from"] = {"from": coarse.identity, "unet_step": coarse.config.training.get("unet_step"),
                                 "unet_minutes": coarse.config.training.get("unet_minutes")}
    if cfg.decoded_parents:
        record["decoded_parents"] = True
    if cfg.nucleus_stamps:
        record["nucleus_stamps"] = True
    if (spec := sampled_spec(cfg)) is not None:  # "from" only when not the layout, as bundles from before the option record it
        record["sampled_parents"] = {k: v for k, v in spec.items() if k != "from" or v != "layout"}

    def current_record() -> dict[str, Any]:
        rec = record | {k: getattr(st, k) for k in ("ae_step", "unet_step")} | {
            "ae_minutes": round(st.ae_seconds / 60, 1), "unet_minutes": round(st.unet_seconds / 60, 1),
            "ae_batch": cfg.ae_batch, "ae_crop": cfg.ae_crop, "unet_batch": cfg.unet_batch, "layout_tile": cfg.layout_tile,
            "level_probs": list(cfg.level_probs)}
        if math.isfinite(st.val_best):
            rec["validation"] = {"best_held_v_loss": round(st.val_best, 5), "best_step": st.val_best_step, "times": list(val_times(cfg.t_range))}
        return rec

    def checkpoint() -> None:
        nonlocal last_ckpt
        st.save(run / "state.pt", cfg)
        export_bundle(run / "bundle.safetensors", cfg, st, current_record(), guided, coarse)
        logger.flush()
        last_ckpt = time.monotonic()

    def validate() -> None:
        """Measure the EMA denoiser on the fixed held-out and training crops; a new held-out best is
        exported as bundle-best.safetensors."""
        losses = val_losses(st.unet_ema, valset, udtype)
        st.val_last_step = st.unet_step
        for (split, lv), v in losses.items():
            logger.row(st.unet_seconds, f"val_{split}", st.unet_step, v, {"level": lv})
        score = val_score(losses, cfg.level_probs)
        if score is None:
            return
        if improved(score, st.val_best):
            st.val_best, st.val_best_step, st.val_stale = score, st.unet_step, 0
            export_bundle(run / "bundle-best.safetensors", cfg, st, current_record(), guided, coarse)
        else:
            st.val_stale += 1
        text = ", ".join(f"{split} {cfg.magnifications[lv]:g}x{' pixels' if lv in cfg.pixel_levels else ''} {v:.4f}"
                         for (split, lv), v in losses.items())
        log(f"validation at step {st.unet_step}: {text}; best held-out {st.val_best:.4f} at step {st.val_best_step}")

    try:
        # ---- phase 1: autoencoder
        def ae_done() -> bool:
            return bool(st.ae_source) or st.ae_seconds >= cfg.ae_minutes * 60 or (cfg.ae_max_steps is not None and st.ae_step >= cfg.ae_max_steps)

        if not ae_done():
            bar = tqdm(desc="autoencoder", unit="step", disable=not progress, initial=st.ae_step)
            st.ae.train()
            while not ae_done() and time.monotonic() < deadline:
                t0 = time.monotonic()
                x = ae_batch(levels, cfg, rng).to(device).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    recon, z = st.ae(x)
                loss, parts = ae_loss(x, recon, z)
                st.ae_step += 1
                optimizer_step(loss, st.ae, st.opt_ae, st.ae_ema, cfg.ema, st.ae_step)
                st.ae_seconds += time.monotonic() - t0
                logger.row(st.ae_seconds, "ae", st.ae_step, loss.item(), parts)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", ssim=f"{parts['ssim']:.3f}")
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    checkpoint()
            bar.close()
            checkpoint()
        if time.monotonic() >= deadline:
            return run / "bundle.safetensors"

        # ---- phase 2: denoiser on all levels
        st.ae_ema.eval()
        scaled = [li for scale in cfg.scale_aug for li in load_training_levels(cfg, scale, reads=reads)]
        warped = [li for k in range(1, cfg.elastic_aug + 1) for li in load_training_levels(cfg, warp=k, reads=reads)]
        if cfg.nucleus_stamps and not st.carried.get("nucleus_stamps"):  # fitted once; a resume keeps it
            k, read = parent_reread(st, cfg, guided, device) or (None, None)
            assert k is not None and read is not None, "--nucleus-stamps needs --decoded-parents"
            spec = fit_stamps(levels, k, read, cfg)
            st.carried["nucleus_stamps"] = spec.to_dict()
            log(f"nucleus stamps fitted on the training images: {spec}")
        reread = parent_reread(st, cfg, guided, device)
        blur = st.carried["level_blur"] = run_blur(cfg, st, guided)  # kept for --resume
        st.carried["sampled_parents"] = sampled_spec(cfg)  # load_state refuses a resume with other sampled parents
        if any(blur):
            log(f"levels smoothed before encoding, sigma px per level: {list(blur)}")
        coarse_ae = coarse.ae if coarse is not None else None
        latents = encode_all(levels + scaled + warped, st.ae_ema, cfg, device, torch.bfloat16, log, reread=reread, blur=blur,
                             coarse_ae=coarse_ae)
        n_fine = len(latents.latents)  # variants the finest level draws from; coarse warps follow them
        if cfg.coarse_warps:
            bent = [li for k in range(1, cfg.coarse_warps + 1) for li in load_training_levels(cfg, warp=k, reads=reads, coarse=True)]
            latents = latents.extended(encode_all(bent, st.ae_ema, cfg, device, torch.bfloat16, log, reread=reread, skip_finest=True, blur=blur))
        if not st.latent_scale:
            st.latent_scale = float(1.0 / np.concatenate([v[0].ravel() for v in latents.latents]).std())
            log(f"latent_scale = {st.latent_scale:.4f}")
        if cfg.pixel_levels and not st.pixel_scale:
            st.pixel_scale = float(1.0 / np.concatenate([v[k].ravel() for v in latents.latents for k in cfg.pixel_levels]).std())
            log(f"pixel_scale = {st.pixel_scale:.4f}")
        scales = level_scales(st.latent_scale, st.pixel_scale, len(cfg.magnifications), cfg.pixel_levels,
                              coarse.config.latent_scale if coarse is not None else None)
        latents = latents.scaled(scales)
        abar = torch.tensor(cosine_alphas_cumprod(1000), dtype=torch.float32, device=device)
        probs = np.array(cfg.level_probs) / sum(cfg.level_probs)
        udtype = torch.bfloat16 if cfg.unet_precision == "bf16" else torch.float32
        n = len(cfg.inputs)  # variant 8 i is input i unrotated and unjittered at scale 1 (encode_all)
        unrotated = LatentSet([latents.latents[8 * i] for i in range(n)], [latents.masks[8 * i] for i in range(n)])
        valset = build_valset(validation_latents(cfg, st.ae_ema, scales, unrotated, device, log, reads, reread, blur, coarse_ae),
                              cfg, device, teacher)
        del reads  # every variant is built; the levels hold what the decoder steps need
        sampled = None
        if cfg.sampled_parents:
            from gigagen.train.sampled_parents import sample_parents

            assert cfg.init_from, "--sampled-parents samples with the --init-from bundle"
            sampler = read_bundle_config(Path(cfg.init_from))
            if tuple(sampler.magnifications) != tuple(cfg.magnifications) or sampler.pixel_levels != cfg.pixel_levels:
                raise UserError(f"--sampled-parents: {cfg.init_from} samples other levels than this run trains; keep its magnifications")
            # only the finest level takes sampled parents: the coarse-warp variants need none
            sampled = sample_parents(Path(cfg.init_from), latents.latents[:n_fine], cfg.sampled_parents,
                                     device, log, progress, cache=run / "sampled_parents.npz", source=cfg.sampled_parents_from)
        if st.val_last_step != st.unet_step:
            validate()  # where this run starts (a new denoiser or an --init-from bundle's)
        bar = tqdm(desc="denoiser", unit="step", disable=not progress, initial=st.unet_step)
        st.unet.train()

        def stop_early() -> bool:
            if cfg.early_stop and st.val_stale >= cfg.early_stop:
                log(f"early stop: {st.val_stale} validations without a better held-out loss than step {st.val_best_step}'s")
                return True
            return False

        while time.monotonic() < deadline and (cfg.unet_max_steps is None or st.unet_step < cfg.unet_max_steps) and not stop_early():
            t0 = time.monotonic()
            level = int(rng.choice(len(probs), p=probs))
            x0, cond, mask, cnoise = (torch.from_numpy(a).to(device) for a in unet_batch(latents, cfg, level, rng, sampled=sampled))
            cond, cond_t = augment_cond(cond, cnoise, mask, abar, cfg.cond_aug_max, rng)
            b = x0.shape[0]
            t = torch.from_numpy(rng.integers(*cfg.t_range, size=b)).to(device)
            a = abar[t].sqrt()[:, None, None, None]
            s = (1 - abar[t]).sqrt()[:, None, None, None]
            xt, target = noised_pair(x0, a, s, cfg.input_perturbation)
            xt = xt.contiguous(memory_format=torch.channels_last)
            cond = cond.contiguous(memory_format=torch.channels_last)
            if teacher is not None:
                target = teacher_target(teacher, xt, t, level, cond, mask)
            with torch.autocast(device.type, dtype=udtype, enabled=udtype != torch.float32):
                out = st.unet(xt, t.float(), torch.full((b,), level, dtype=torch.long, device=device), cond, mask, cond_t)
            loss = (out.float() - target).pow(2).mean()
            st.unet_step += 1
            lr = denoiser_lr(st.opt_unet, cfg.unet_lr, cfg.warmup_steps, deadline - t0, cfg.lr_decay_minutes * 60)
            optimizer_step(loss, st.unet, st.opt_unet, st.unet_ema, cfg.ema, st.unet_step)
            st.unet_seconds += time.monotonic() - t0
            logger.row(st.unet_seconds, "unet", st.unet_step, loss.item(), {"level": level, "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", level=level)
            if cfg.decoder_every and not st.guide_of and st.unet_step % cfg.decoder_every == 0:
                decoder_step(st, levels, cfg, rng, device, dtype)
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                validate()
                checkpoint()
        bar.close()
        if st.val_last_step != st.unet_step:
            validate()
    except KeyboardInterrupt:
        log("interrupted: saving a checkpoint")
        checkpoint()
        raise
    checkpoint()
    return run / "bundle.safetensors"

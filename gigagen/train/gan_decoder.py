"""Adversarial decoder fine-tune (`gigagen train --decoder-of BUNDLE`): teach a bundle's decoder to render
the latents its own denoiser samples as tissue.

Why: the decoder was trained to reconstruct latents of real tissue (L1 + SSIM + FFT). The denoiser's
samples are not such latents: a small, briefly trained denoiser regresses towards the mean where it is
unsure, and the reconstruction decoder renders those latents as granular mush. Latent-diffusion
autoencoders are normally trained with a patch discriminator for exactly this crispness (Esser et al.
2021, "Taming transformers"; Rombach et al. 2022); ours had none. Here the decoder learns, from the
bundle's own samples, to draw what a PatchGAN discriminator cannot tell from real training crops:

- a bank: at the finest level, every training image in its 8 orientations is sampled from pure noise
  conditioned on the real latent of its parent level, exactly as `gigagen slide` samples (grid-shift
  DDIM, the bundle's autoguidance), so the decoder sees the latents it will see at inference;
- adversarial (hinge) loss: decoded samples and decoded real latents against real crops;
- anchor: the decoded sample's `gan_anchor_pool`-px block means stay those of the original decoder, so
  the layout and stain the latent says are kept and only finer detail is redrawn;
- reconstruction: the original L1 + SSIM + FFT loss on real latents keeps the autoencoder faithful;
- optionally (`--decoder-refine W`) the decoder first grows a full-resolution refiner of W channels
  (gigagen.models.vae.Refiner) whose output starts at zero: the small decoder's last stage has too few
  channels to draw pixel-scale detail, and the grown decoder starts exactly where the old one was.

The encoder, the denoiser, the guide and the latent scale are the bundle's, untouched: only the decoder
changes, so inference costs exactly what it did (more with a refiner: measured 9-15% on 2048^2 slides at W 32).

With `--decoder-level K` (K a pixel level under the latent level K + 1 of its own magnification) the same
fine-tune makes a second decoder, the bundle's *level decoder*: it learns to draw level K's pixels from level
K + 1's latents, sampled (from the real level K + 2) and real, and the exported bundle no longer samples
level K by diffusion but reads it off level K + 1 with that decoder (BundleConfig.decoded_level). Why: a
small denoiser sampling 5x pixels draws speckle even from the real 5x latent, while a decoder reads that
latent as fibres and nuclei; adversarially tuned, it draws them crisply enough for the 20x level, which was
trained on real 5x pixels, to refine (model card, 2026-12-04 third).

With `--decoder-noise N` the level decoder also reads N standard normal channels next to the latent (at slide
time a function of seed, level and position: engine.decode.level_noise), so it can *sample* the detail the latent
does not fix (where each nucleus sits in an 8 x 8 px cell) instead of drawing one deterministic guess. Why: a
deterministic decoder under an adversarial loss draws hatching where the latent is uncertain, and the 20x level
reads hatching as small nuclei (model card, 2026-12-04 third). Given plain noise, a decoder under a pixel
reconstruction loss learns to ignore it (pix2pix's finding, Isola et al. 2017), and without that loss an adversary
alone teaches it too slowly here (model card, 2026-12-04 fifth: speckle). So the run is a conditional VAE-GAN
(BicycleGAN's cVAE-GAN branch, Zhu et al. 2017): a small posterior encoder (NoiseEncoder, training only, not
shipped) reads the real pixels and the latent and proposes the noise that makes the decoder reconstruct the real
pixels (L1 + SSIM + FFT, supervised: where each nucleus is), while a KL term (weight --decoder-kl) keeps that noise
close to the standard normal the slide draws from; the block-mean anchor and the adversary judge the sampled
latents decoded with standard normal noise, as gigagen slide decodes them (the adversary the reconstructions too). The noise's stem weights start small
and random (zero in the anchor decoder), so the run starts where the bundle's decoder is.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from gigagen.engine.grid import Tiling
from gigagen.engine.store import LevelSpec, MemoryStore
from gigagen.engine.tiler import denoise_level, step_plans
from gigagen.errors import UserError
from gigagen.models.checkpoint import ModelBundle, load_bundle, save_like
from gigagen.models.denoiser import BundleRunner
from gigagen.models.vae import Autoencoder, Decoder
from gigagen.sampling.schedules import ddim_timesteps
from gigagen.train import data as D
from gigagen.train.losses import ae_loss
from gigagen.train.loop import (Logger, TrainConfig, _device, _resolved, _sigterm_as_interrupt, ema_update,
                                level_array, load_training_levels, save_atomic)

BANK_STEPS = 20  # DDIM steps of the bank's samples: gigagen slide's default
ANCHOR_WEIGHT = 1.0
PAIRED_SEED_OFFSET = 1_000_000  # paired (SDEdit) bank entries draw their noise from seeds apart from the pure-noise ones
NOISE_INIT_STD = 0.02  # of the stem weights a noise channel starts with: a small nudge that training grows


class NoiseEncoder(nn.Module):
    """q(noise | real pixels, latent): the pixels brought down to the latent grid by `factor` (strided convs), read
    next to the latent -> (mean, log variance) of `noise_ch` channels per latent pixel. Training only."""

    def __init__(self, latent_ch: int, noise_ch: int, factor: int, width: int = 48) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.SiLU()]
        for _ in range(factor.bit_length() - 1):
            layers += [nn.Conv2d(width, width, 4, 2, 1), nn.SiLU()]
        self.down = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(width + latent_ch, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, 2 * noise_ch, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(torch.cat([self.down(x), z], 1)).chunk(2, 1)
        return mean, logvar.clamp(-8.0, 4.0)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) with spectral norm (Miyato et al. 2018): one real/fake logit per
    ~46-px patch, so it judges texture (nuclei, fibres), not layout."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        w = width
        self.net = nn.Sequential(
            sn(nn.Conv2d(3, w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * w, 4 * w, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * w, 1, 3, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Bank:
    """Per training image and orientation: the target pixels, the real latent and a sampled latent (scaled)."""

    images: list[np.ndarray]  # (H, W, 3) uint8
    real: list[np.ndarray]  # (C, H/f, W/f)
    sampled: list[np.ndarray]  # (C, H/f, W/f)
    masks: list[np.ndarray]  # (H/f, W/f) bool tissue
    paired: list[bool]  # the sample was denoised from the real latent noised to a --gan-paired timestep: aligned with
    # the image, so the decoder may learn to reconstruct it


def sample_finest(runner: BundleRunner, parent: np.ndarray, shape: tuple[int, int], seed: int,
                  steps: int = BANK_STEPS, eta: float = 0.0, tile: int | None = None,
                  start: tuple[np.ndarray, int] | None = None, level: int = 0) -> np.ndarray:
    """The finest level (or with `level` another refinement level) over `shape` cells sampled from noise given
    its parent level's array, as gigagen slide does (default: its 20 DDIM steps, eta 0, the bundle's sampling
    tile and the runner's conditioning noise).

    start=(z, t0) instead noises the latent z to the first of those timesteps <= t0 and denoises it from there
    (SDEdit, Meng et al. 2022): which noise levels decide what the sample looks like."""
    c = runner.bundle.config
    tiling = Tiling(tile=tile or c.sampling_tile, divisor=c.unet.divisor)
    store = MemoryStore(LevelSpec(level, shape, c.level_channels[level], seed, tiling, runner.cond_noise))
    timesteps = ddim_timesteps(c.n_train_steps, steps)
    if start is not None:
        z, t0 = start
        timesteps = timesteps[timesteps <= t0]
        if z.shape != store.canvas.shape:
            raise ValueError(f"start latent has shape {z.shape}, not {store.canvas.shape}")
        if not len(timesteps):
            raise ValueError(f"start t0 {t0} is below the last of the {steps} sampling timesteps")
        abar = float(runner.alphas_cumprod[timesteps[0]])
        store.canvas = (np.sqrt(abar) * z + np.sqrt(1.0 - abar) * store.canvas).astype(np.float32)
    plans = step_plans(runner.alphas_cumprod, timesteps)
    denoise_level(store, parent=parent, factor=c.parent_factors[level], model_fn=runner.model_fn, steps=plans, eta=eta)
    return store.canvas.astype(np.float32)


def bank_levels(decoder_level: int | None) -> tuple[int, int]:
    """(the level whose pixels the decoder draws, the latent level it reads): the finest level's own latent,
    or with --decoder-level K, level K's pixels from level K + 1's latent."""
    return (0, 0) if decoder_level is None else (decoder_level, decoder_level + 1)


def build_bank(bundle: ModelBundle, levels: list[D.LevelImages], seeds: int, device: torch.device,
               log: Callable[[str], None], progress: bool, cache: Path | None = None, decoder_level: int | None = None,
               paired: tuple[int, ...] = ()) -> Bank:
    """Sample the decoded latent level (bank_levels) of every training image, orientation and seed from its real
    parent (the slow part: one full denoising per entry), and with `paired` once more per timestep t0 from the real
    latent noised to t0 (SDEdit: the layout and most nuclei stay where the image has them, degraded as the denoiser
    degrades them). With `cache`, samples of the same bundle, level, seeds and timesteps are read back from there (a
    resumed run does not sample again) and new ones are written to it."""
    from tqdm import tqdm

    c = bundle.config
    f = c.ae.factor
    pix, lat = bank_levels(decoder_level)
    key = f"{bundle.identity} seeds={seeds} level={lat} images={[li.images[0].shape for li in levels]}"
    key += f" paired={list(paired)}" if paired else ""
    cached = read_cached_arrays(cache, key) or []
    runner = BundleRunner(bundle, device, torch.bfloat16, c.guidance_per_level, c.autoguidance)
    bank = Bank([], [], [], [], [])
    starts = [(s, None) for s in range(seeds)] + [(j, t0) for j, t0 in enumerate(paired)]
    bar = tqdm(total=len(levels) * 8 * len(starts), desc="sampling the decoder's bank", unit="image", disable=not progress or bool(cached))
    for i, li in enumerate(levels):
        for k in range(8):
            img = np.ascontiguousarray(D.dihedral(li.images[pix], k))
            real = level_array(bundle, np.ascontiguousarray(D.dihedral(li.images[lat], k)), lat, device)
            parent = level_array(bundle, D.dihedral(li.images[lat + 1], k), lat + 1, device)
            mask = D.dihedral(li.masks[lat], k)[f // 2 :: f, f // 2 :: f]
            for s, t0 in starts:
                n = len(bank.sampled)
                bank.images.append(img)
                bank.real.append(real)
                bank.masks.append(mask)
                bank.paired.append(t0 is not None)
                if cached:
                    bank.sampled.append(cached[n])
                    continue
                if t0 is None:
                    seed, start = (i * 8 + k) * seeds + s, None
                else:
                    seed, start = PAIRED_SEED_OFFSET + (i * 8 + k) * len(paired) + s, (real, t0)
                bank.sampled.append(sample_finest(runner, parent, real.shape[1:], seed=seed, start=start, level=lat))
                bar.update(1)
    bar.close()
    if not cached:
        write_cached_arrays(cache, key, bank.sampled)
    log(f"decoder bank: {len(bank.images)} sampled images" + (f" (read from {cache})" if cached else ""))
    return bank


def read_cached_arrays(cache: Path | None, key: str) -> list[np.ndarray] | None:
    """The arrays `write_cached_arrays` saved at `cache` under the same `key`, else None (also for a damaged file:
    it only costs the time to sample again)."""
    if cache is None or not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            return [z[f"s{i}"] for i in range(len(z.files) - 1)] if str(z["key"]) == key else None
    except Exception:
        return None


def write_cached_arrays(cache: Path | None, key: str, arrays: list[np.ndarray]) -> None:
    """Save `arrays` under `key` at `cache` (nothing if None), atomically: a run stopped while writing leaves no
    half file behind."""
    if cache is None:
        return
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, key=np.array(key), **{f"s{i}": a for i, a in enumerate(arrays)})
    tmp.replace(cache)


def bank_batch(bank: Bank, cfg: TrainConfig, f: int, scale: float, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """(real crops, their sampled latents, their real latents, whether each sample is paired with its crop); crops of
    cfg.ae_crop px, mostly tissue."""
    t = cfg.ae_crop // f
    xs, ss, zs, ps = [], [], [], []
    for _ in range(cfg.ae_batch):
        i = int(rng.integers(len(bank.images)))
        # crop positions in latent pixels (the mask is at latent resolution; its shape stands in for an image's)
        y, x = D.sample_crop(bank.masks[i][..., None], bank.masks[i], t, rng, cfg.min_tissue if rng.random() < 0.8 else 0.0)
        xs.append(bank.images[i][y * f : (y + t) * f, x * f : (x + t) * f])
        ss.append(bank.sampled[i][:, y : y + t, x : x + t])
        zs.append(bank.real[i][:, y : y + t, x : x + t])
        ps.append(bank.paired[i])
    cl = torch.channels_last
    return (torch.from_numpy(D.to_tensor_range(np.stack(xs))).contiguous(memory_format=cl),
            (torch.from_numpy(np.stack(ss)) / scale).contiguous(memory_format=cl),
            (torch.from_numpy(np.stack(zs)) / scale).contiguous(memory_format=cl), torch.tensor(ps))


@dataclass
class GanState:
    original: nn.Module  # the decoder the fine-tune started from (the bundle's, grown by the refiner if asked)
    decoder: nn.Module
    decoder_ema: nn.Module
    disc: PatchDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    step: int = 0
    seconds: float = 0.0
    decoder_of: str = ""
    identity: str = ""  # of the decoder_of bundle: a resumed run must mix with the same original decoder
    noise_encoder: NoiseEncoder | None = None  # with --decoder-noise: the posterior over the decoder's noise

    def save(self, path: Path, cfg: TrainConfig) -> None:
        blob = {k: getattr(self, k).state_dict() for k in STATE_PARTS if getattr(self, k) is not None}
        blob |= {"refine_ch": self.original.cfg.refine_ch, "noise_ch": self.original.noise_ch, "step": self.step, "seconds": self.seconds,
                 "decoder_of": self.decoder_of, "identity": self.identity, "config": dataclasses.asdict(cfg)}
        save_atomic(blob, path)


STATE_PARTS = ("original", "decoder", "decoder_ema", "disc", "opt_g", "opt_d", "noise_encoder")


def start_decoder(bundle: ModelBundle, refine_ch: int, noise_ch: int = 0) -> Decoder:
    """The bundle's decoder, grown by a refiner of refine_ch channels (0: as it is) and by noise_ch input channels
    of zero weight; draws what the bundle's draws."""
    dec = Decoder(dataclasses.replace(bundle.config.ae, refine_ch=refine_ch or bundle.config.ae.refine_ch), noise_ch)
    state = dict(bundle.ae.decoder.state_dict())
    if noise_ch:
        w = state["stem.weight"]
        state["stem.weight"] = torch.cat([w, w.new_zeros(w.shape[0], noise_ch, *w.shape[2:])], 1)
    missing, unexpected = dec.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("refine.") for k in missing), (missing, unexpected)
    return dec.float().eval().requires_grad_(False)


def new_gan_state(bundle: ModelBundle, cfg: TrainConfig, path: str) -> GanState:
    original = start_decoder(bundle, cfg.gan_refine, cfg.decoder_noise)
    decoder = copy.deepcopy(original).train().requires_grad_(True)
    with torch.no_grad():  # the tuned decoder hears its noise a little from the start (see the module docstring)
        decoder.stem.weight[:, bundle.config.ae.latent_ch :].normal_(0.0, NOISE_INIT_STD)
    c = bundle.config.ae
    encoder = NoiseEncoder(c.latent_ch, cfg.decoder_noise, c.factor) if cfg.decoder_noise else None
    trained = list(decoder.parameters()) + (list(encoder.parameters()) if encoder is not None else [])
    disc = PatchDiscriminator()
    return GanState(
        original, decoder, copy.deepcopy(decoder).eval().requires_grad_(False), disc,
        torch.optim.Adam(trained, lr=cfg.gan_lr, betas=(0.5, 0.9)),
        torch.optim.Adam(disc.parameters(), lr=2 * cfg.gan_lr, betas=(0.5, 0.9)),
        decoder_of=path, identity=bundle.identity, noise_encoder=encoder,
    )


def load_gan_state(path: Path, bundle: ModelBundle, cfg: TrainConfig) -> GanState:
    if not path.is_file():
        raise UserError(f"--resume: no training state at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if _resolved(blob.get("decoder_of", "")) != _resolved(cfg.decoder_of):
            raise UserError(f"--resume: {path} is not a --decoder-of {cfg.decoder_of} run; resume it with its own options")
        if blob.get("identity", bundle.identity) != bundle.identity:
            raise UserError(f"--resume: --decoder-of {cfg.decoder_of} is now {bundle.identity}, not the {blob['identity']} this run started from")
        if blob.get("config", {}).get("decoder_level") != cfg.decoder_level:
            raise UserError(f"--resume: {path} tuned a decoder for --decoder-level {blob.get('config', {}).get('decoder_level')}; resume it with its own options")
        if blob.get("noise_ch", 0) != cfg.decoder_noise:
            raise UserError(f"--resume: {path} tuned a level decoder with --decoder-noise {blob.get('noise_ch', 0)}; resume it with that option")
        st = new_gan_state(bundle, cfg, str(cfg.decoder_of))
        if blob.get("refine_ch", 0) != st.original.cfg.refine_ch:
            raise UserError(f"--resume: {path} grew a refiner of {blob.get('refine_ch', 0)} channels; resume it with --decoder-refine {blob.get('refine_ch', 0)}")
        for k in STATE_PARTS:
            if k in blob:  # runs from before the refiner saved no "original": theirs is the bundle's decoder
                # (and runs without --decoder-noise no noise_encoder)
                getattr(st, k).load_state_dict(blob[k])
    except UserError:
        raise
    except Exception as exc:  # a truncated or foreign file: one line, not a traceback
        raise UserError(f"--resume: {path} is not a readable decoder fine-tune state ({str(exc).splitlines()[0]})") from None
    st.step, st.seconds = int(blob["step"]), float(blob["seconds"])
    return st


def standard_normal(z: torch.Tensor, channels: int) -> torch.Tensor:
    """`channels` standard normal channels over z's batch and grid (the slide draws them per position instead)."""
    return torch.randn(z.shape[0], channels, *z.shape[2:], device=z.device, dtype=z.dtype)


def with_noise(z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A noise-fed decoder's input: z followed by its noise channels (none for the autoencoder's decoder)."""
    return torch.cat([z, noise], 1).contiguous(memory_format=torch.channels_last) if noise.shape[1] else z


def noise_posterior(encoder: NoiseEncoder | None, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise drawn from q(noise | x, z) by reparameterisation, KL(q || N(0, 1)) per noise element); with no
    encoder (a decoder without noise) no channels and KL 0."""
    if encoder is None:
        return z[:, :0], z.new_zeros(())
    mean, logvar = encoder(x, z)
    noise = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return noise, kl


def gan_step(st: GanState, anchor_decoder: nn.Module, batch: tuple[torch.Tensor, ...], cfg: TrainConfig) -> dict[str, float]:
    """One discriminator step, then one decoder step (hinge losses, Lim & Ye 2017)."""
    x, s, z, paired = batch
    sn = with_noise(s, standard_normal(s, st.original.noise_ch))
    posterior = noise_posterior(st.noise_encoder, x, z)
    gs, gz = st.decoder(sn), st.decoder(with_noise(z, posterior[0]))
    fake = torch.cat([gs, gz])
    st.disc.requires_grad_(True)
    loss_d = F.relu(1 - st.disc(x)).mean() + F.relu(1 + st.disc(fake.detach())).mean()
    st.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    st.opt_d.step()
    st.disc.requires_grad_(False)  # the decoder's step needs gradients through D, not into it
    rec, parts = ae_loss(x, gz, z, w_lat=0.0)
    if paired.any():  # SDEdit samples keep the image's layout: learn to draw the real tissue from them
        rec_paired, _ = ae_loss(x[paired], gs[paired], s[paired], w_lat=0.0)
        rec = rec + rec_paired
        parts["paired"] = rec_paired.item()
    if st.noise_encoder is not None:
        kl = posterior[1]
        rec = rec + cfg.decoder_kl * kl
        parts["kl"] = kl.item()
    with torch.no_grad():
        target = F.avg_pool2d(anchor_decoder(sn), cfg.gan_anchor_pool)
    anchor = (F.avg_pool2d(gs, cfg.gan_anchor_pool) - target).abs().mean()
    adv = -st.disc(fake).mean()
    loss = rec + ANCHOR_WEIGHT * anchor + cfg.gan_adv * adv
    st.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(st.decoder.parameters(), 1.0)
    st.opt_g.step()
    st.step += 1
    ema_update(st.decoder_ema, st.decoder, min(cfg.ema, (1 + st.step) / (10 + st.step)))
    return {"loss": loss.item(), "d": loss_d.item(), "rec": rec.item(), "anchor": anchor.item(), "adv": adv.item()} | parts


def mixed_decoder(original: nn.Module, tuned: nn.Module, mix: float) -> dict[str, torch.Tensor]:
    """(1 - mix) original + mix tuned, weight by weight (WiSE-FT, Wortsman et al. 2022): interpolating a
    fine-tune towards its start keeps most of its gain with less of its drift (measured: the fully tuned
    decoder over-sharpens, see the model card)."""
    tuned_sd = tuned.state_dict()
    return {k: torch.lerp(v.float(), tuned_sd[k].float(), mix).to(v.dtype) for k, v in original.state_dict().items()}


def mixed_autoencoder(bundle: ModelBundle, original: Decoder, tuned: nn.Module, mix: float) -> Autoencoder:
    """The bundle's encoder with the decoder mixed_decoder(original, tuned, mix), in original's architecture."""
    ae = Autoencoder(original.cfg)
    ae.encoder.load_state_dict(bundle.ae.encoder.state_dict())
    ae.decoder.load_state_dict(mixed_decoder(original, tuned, mix))
    return ae


def export(path: Path, bundle: ModelBundle, st: GanState, cfg: TrainConfig) -> None:
    """The bundle whole, with the fine-tuned (EMA) decoder mixed by cfg.gan_mix and the fine-tune's record:
    as its autoencoder's decoder, or with --decoder-level K as its level decoder for level K."""
    rec = {"refine_ch": st.original.cfg.refine_ch, "steps": st.step, "minutes": round(st.seconds / 60, 1),
           "decoder_of": Path(st.decoder_of).name, "batch": cfg.ae_batch, "crop": cfg.ae_crop, "adv_weight": cfg.gan_adv,
           "anchor_pool": cfg.gan_anchor_pool, "lr": cfg.gan_lr,
           "bank_seeds": cfg.gan_bank_seeds, "paired": list(cfg.gan_paired), "mix": cfg.gan_mix, "seed": cfg.seed}
    if cfg.decoder_level is not None:
        noise = st.original.noise_ch
        level_decoder = Decoder(st.original.cfg, noise)
        level_decoder.load_state_dict(mixed_decoder(st.original, st.decoder_ema, cfg.gan_mix))
        rec |= {"level": cfg.decoder_level} | ({"noise_ch": noise, "kl_weight": cfg.decoder_kl} if noise else {})
        training = bundle.config.training | {"level_decoder_gan": rec}
        save_like(path, bundle, dataclasses.replace(bundle.config, decoded_level=cfg.decoder_level, level_decoder_noise=noise,
                                                    training=training), level_decoder=level_decoder)
        return
    ae = mixed_autoencoder(bundle, st.original, st.decoder_ema, cfg.gan_mix)
    training = bundle.config.training | {"decoder_gan": rec}
    save_like(path, bundle, dataclasses.replace(bundle.config, ae=st.original.cfg, training=training), ae=ae)


def train_decoder(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Fine-tune cfg.decoder_of's decoder (or continue doing so); returns the exported bundle path."""
    from tqdm import tqdm

    assert cfg.decoder_of
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    run = Path(cfg.out)
    if not resume and (run / "state.pt").exists():
        raise UserError(f"{run} already holds a training run; pass --resume to continue it or choose another --out")
    bundle = load_bundle(Path(cfg.decoder_of), device)
    if not bundle.config.trained:
        raise UserError(f"--decoder-of: {cfg.decoder_of} holds an untrained denoiser; its samples would teach the decoder noise")
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    st = load_gan_state(run / "state.pt", bundle, cfg) if resume else new_gan_state(bundle, cfg, cfg.decoder_of)
    anchor_decoder = st.original  # at the start, and without a refiner ever, the bundle's decoder
    for m in (st.decoder, st.decoder_ema, anchor_decoder):
        m.to(device=device, memory_format=torch.channels_last)
    st.disc.to(device)
    if st.noise_encoder is not None:
        st.noise_encoder.to(device)
    deadline = time.monotonic() + cfg.max_minutes * 60  # the bank's sampling counts against the limit too
    _sigterm_as_interrupt()

    def steps_left() -> bool:
        return time.monotonic() < deadline and (cfg.gan_max_steps is None or st.step < cfg.gan_max_steps)

    # a run resumed at its step limit only re-exports (e.g. with another --gan-mix): no bank needed
    levels = load_training_levels(cfg) if steps_left() else []
    pix = bank_levels(cfg.decoder_level)[0]
    small = [li.images[pix].shape for li in levels if min(li.images[pix].shape[:2]) < cfg.ae_crop]
    if small:
        raise UserError(f"--decoder-of: a {small[0][1]}x{small[0][0]} px training image (at the decoded level) is smaller than --ae-crop {cfg.ae_crop}")
    bank = build_bank(bundle, levels, cfg.gan_bank_seeds, device, log, progress, run / "bank.npz", cfg.decoder_level,
                      cfg.gan_paired) if levels else None
    f, scale = bundle.config.ae.factor, bundle.config.latent_scale
    rng = np.random.default_rng([cfg.seed, st.step])
    logger = Logger(run)
    last_ckpt = time.monotonic()

    def checkpoint() -> None:
        nonlocal last_ckpt
        st.save(run / "state.pt", cfg)
        export(run / "bundle.safetensors", bundle, st, cfg)
        logger.flush()
        last_ckpt = time.monotonic()

    bar = tqdm(desc="decoder (adversarial)", unit="step", disable=not progress, initial=st.step)
    try:
        while bank is not None and steps_left():
            t0 = time.monotonic()
            batch = tuple(a.to(device) for a in bank_batch(bank, cfg, f, scale, rng))
            parts = gan_step(st, anchor_decoder, batch, cfg)
            st.seconds += time.monotonic() - t0
            logger.row(st.seconds, "gan", st.step, parts.pop("loss"), parts)
            bar.update(1)
            bar.set_postfix(d=f"{parts['d']:.3f}", ssim=f"{parts['ssim']:.3f}")
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                checkpoint()
    except KeyboardInterrupt:
        log("interrupted: saving a checkpoint")
        checkpoint()
        raise
    bar.close()
    checkpoint()
    return run / "bundle.safetensors"

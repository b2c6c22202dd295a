"""Adapters from a model bundle to the engine's callables.

The only place that knows the network's parameterisation (v or eps), latent scaling, devices and
precision. The engine sees numpy arrays in and out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from gigagen.engine.condition import cond_noise_std
from gigagen.engine.exemplar import Encode, ExemplarBank, build_bank
from gigagen.engine.layout import LayoutExemplar, layout_exemplar
from gigagen.config import per_level
from gigagen.errors import UserError
from gigagen.models.checkpoint import ModelBundle
from gigagen.sampling.ddim import cfg_combine, split_prediction
from gigagen.sampling.schedules import cosine_alphas_cumprod


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; asking for cuda without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 autocast (2x faster on AVX-512 BF16 CPUs and on GPUs; fp16 is never used)."""
    if precision == "fp32":
        return torch.float32
    if precision in ("auto", "bf16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float32
        return torch.bfloat16
    raise UserError(f"unknown precision {precision!r}; choose auto, bf16 or fp32")


@dataclass
class Counters:
    """Network evaluations, counted in latent pixels evaluated (one per pixel per pass)."""

    unet_calls: int = 0
    unet_tiles: int = 0
    unet_pixels: int = 0
    decode_calls: int = 0
    guide_tiles: int = 0  # evaluations of the (smaller) autoguidance network, counted apart
    guide_pixels: int = 0


def cond_aug_timestep(bundle: ModelBundle, requested: int | None) -> int:
    """The conditioning noise timestep a run uses: the bundle's default when none is asked for; a nonzero
    one needs a denoiser trained with conditioning augmentation."""
    if requested is None:
        return bundle.config.cond_aug
    if not 0 <= requested < bundle.config.n_train_steps:
        raise UserError(f"cond-aug must be a timestep in 0..{bundle.config.n_train_steps - 1}, not {requested}")
    if requested and not bundle.config.unet.cond_aug:
        raise UserError(f"cond-aug {requested} needs a model trained with conditioning augmentation; {bundle.identity} was not (use 0)")
    return requested


def guidance_weights(bundle: ModelBundle, requested: tuple[float, ...] | None) -> tuple[float, ...]:
    """Classifier-free guidance weight per refinement level, finest first (the layout level has no parent to
    guide with): the bundle's when none is asked for; one value applies to every refinement level."""
    n = len(bundle.config.magnifications) - 1
    if requested is None:
        return bundle.config.guidance_per_level
    weights = per_level(requested, n)
    if len(weights) != n:
        raise UserError(f"guidance: give one weight, or one per refinement level finest first ({n} for {bundle.identity}), not {len(requested)}")
    return weights


def sampling_steps(bundle: ModelBundle, requested: tuple[int, ...] | None) -> tuple[int, ...]:
    """DDIM steps per level, finest first, the layout level included: the bundle's when none are asked for;
    one value applies to every level."""
    c = bundle.config
    n = len(c.magnifications)
    steps = c.steps_per_level if requested is None else per_level(requested, n)
    if len(steps) != n:
        raise UserError(f"steps: give one number, or one per level finest first ({n} for {bundle.identity}), not {len(steps)}")
    if max(steps) > c.n_train_steps:
        raise UserError(f"steps must be at most {c.n_train_steps} for this model")
    return steps


def autoguidance_weight(bundle: ModelBundle, requested: float | None) -> float:
    """The weight a run uses: the bundle's default when none is asked for (1 for a bundle without a guide,
    which validate_config enforces); a weight other than 1 needs a guide network."""
    if requested is None:
        return bundle.config.autoguidance
    if requested != 1.0 and bundle.guide is None:
        raise UserError(f"autoguidance {requested:g} needs a model with a guide network; {bundle.identity} has none (use 1)")
    return requested


@dataclass
class BundleRunner:
    """Callables for the engine: model_fn(x, t, level, cond) -> (x0, eps) and decode_fn(z) -> pixels.

    guidance[level] != 1: classifier-free guidance at that level (the network once more without its parent
    level); levels beyond the tuple are unguided.
    cond_aug > 0: conditioning augmentation; the engine noises the parent (LevelSpec.cond_noise, which
    `cond_noise` gives for this timestep) and the networks trained with it are told the timestep.
    autoguidance != 1: autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
    itself"): the bundle's smaller, shorter-trained guide network makes the same prediction, and the output
    is guide + w (main - guide), pushing samples away from the errors a weaker model makes; only at the
    cascade levels the guide was trained on (bundle.config.guide_levels). Both are
    linear in the network output, so they apply to v as well as eps."""

    bundle: ModelBundle
    device: torch.device
    dtype: torch.dtype
    guidance: tuple[float, ...] = ()  # per refinement level, finest first (guidance_weights)
    autoguidance: float = 1.0
    cond_aug: int | None = None  # None = the bundle's default
    counters: Counters = field(default_factory=Counters)
    _bank: ExemplarBank | None = field(default=None, init=False, repr=False)
    _layout: LayoutExemplar | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.guidance, tuple):  # a lone float would silently mean nothing per level
            raise TypeError(f"guidance is a tuple of weights per refinement level, not {self.guidance!r}")
        autoguidance_weight(self.bundle, self.autoguidance)  # refuses a weight the bundle cannot apply
        self.cond_aug = cond_aug_timestep(self.bundle, self.cond_aug)
        self.alphas_cumprod = cosine_alphas_cumprod(self.bundle.config.n_train_steps)
        # oneDNN's bf16 kernels give every sample the same bits whatever the batch size (tested in
        # tests/test_engine.py); fp32 CPU and cuDNN kernels change with batch size, so there the
        # network sees one tile at a time to keep results independent of --batch-size.
        self.batched = self.device.type == "cpu" and self.dtype == torch.bfloat16
        # channels-last lets oneDNN/cuDNN pick their fast convolution layouts (7x faster decode on CPU)
        self.bundle.ae.to(memory_format=torch.channels_last)
        self.bundle.unet.to(memory_format=torch.channels_last)
        for net in (self.bundle.guide, self.bundle.level_decoder, self.bundle.coarse, self.bundle.expert, self.bundle.coarse_ae):
            if net is not None:
                net.to(memory_format=torch.channels_last)

    @property
    def cond_noise(self) -> float:
        """Std of the noise the engine mixes into each parent level (LevelSpec.cond_noise)."""
        assert self.cond_aug is not None  # resolved in __post_init__
        return float(cond_noise_std(self.alphas_cumprod, self.cond_aug))

    def guidance_at(self, level: int) -> float:
        return self.guidance[level] if level < len(self.guidance) else 1.0

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)
        return t.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def _net(self, net: torch.nn.Module, x: torch.Tensor, t: int | torch.Tensor, level: int, cond: torch.Tensor, mask: float) -> torch.Tensor:
        b = x.shape[0]
        # one timestep for the batch when sampling; one per sample when distilling (gigagen.train.distill)
        ts = t.float().to(self.device) if isinstance(t, torch.Tensor) else torch.full((b,), float(t), device=self.device)
        lv = torch.full((b,), level, dtype=torch.long, device=self.device)
        cm = torch.full((b,), mask, device=self.device)
        # a network trained with conditioning augmentation is told the parent's noise timestep (0 without one)
        ct = torch.full((b,), float(self.cond_aug if mask else 0), device=self.device) if net.cfg.cond_aug else None
        with self._autocast():
            if self.batched:
                out = net(x, ts, lv, cond, cm, ct)
            else:
                out = torch.cat([net(x[i : i + 1], ts[:1], lv[:1], cond[i : i + 1], cm[:1], None if ct is None else ct[:1])
                                 for i in range(b)])
        return out.float()

    def _unet(self, x: torch.Tensor, t: int | torch.Tensor, level: int, cond: torch.Tensor, mask: float) -> torch.Tensor:
        """The main network's output (the coarse network's at its levels, the expert's at its levels and timesteps),
        autoguided when autoguidance != 1."""
        # per-sample timesteps (distillation) only for bundles without an expert (distill_plan refuses those)
        net = self.bundle.denoiser(level, None if isinstance(t, torch.Tensor) else int(t))
        out = self._net(net, x, t, level, cond, mask)
        n = x.shape[0]
        self.counters.unet_calls += 1
        self.counters.unet_tiles += n
        self.counters.unet_pixels += n * x.shape[2] * x.shape[3]
        if self.autoguidance != 1.0 and level in self.bundle.config.guide_levels:
            assert self.bundle.guide is not None  # checked in __post_init__
            weak = self._net(self.bundle.guide, x, t, level, cond, mask)
            self.counters.guide_tiles += n
            self.counters.guide_pixels += n * x.shape[2] * x.shape[3]
            out = cfg_combine(out, weak, self.autoguidance)  # weak + w (main - weak)
        return out

    def guided(self, xt: torch.Tensor, t: int | torch.Tensor, level: int, cond: torch.Tensor | None) -> torch.Tensor:
        """The network output sampling uses at x_t (channels-last tensors): with the run's classifier-free guidance
        and autoguidance at this level; cond None (the layout level, or a dropped parent) is the unconditional
        output. Two passes only where guidance != 1 (and the guide's where autoguidance != 1)."""
        if cond is None:  # zeros of the parent's shape, which the network's null flag tells it to ignore
            shape = (xt.shape[0], self.bundle.denoiser(level).cfg.cond_channels, *xt.shape[2:])
            return self._unet(xt, t, level, xt.new_zeros(shape).contiguous(memory_format=torch.channels_last), 0.0)
        out = self._unet(xt, t, level, cond, 1.0)
        w = self.guidance_at(level)
        if w != 1.0:
            out = cfg_combine(out, self._unet(xt, t, level, cond, 0.0), w)
        return out

    def model_fn(self, x: np.ndarray, t: int, level: int, cond: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """x_t, cond: (B, C, h, w) scaled latents -> (x0, eps)."""
        xt = self._tensor(x)
        out = self.guided(xt, t, level, None if cond is None else self._tensor(cond))
        x0, eps = split_prediction(out, xt, float(self.alphas_cumprod[t]), self.bundle.config.prediction)
        return x0.cpu().numpy(), eps.cpu().numpy()

    @torch.no_grad()
    def decode_fn(self, z: np.ndarray) -> np.ndarray:
        """(1, C, h, w) scaled latent -> (1, 3, h*f, w*f) pixels in [-1, 1]."""
        return self._decode(self.bundle.ae.decoder, z)

    def decode_fn_at(self, level: int) -> Callable[[np.ndarray], np.ndarray]:
        """decode_fn for `level`'s latent: the coarse autoencoder's decoder and latent scale above the finest level
        of a bundle that has one (BundleConfig.coarse_ae), else decode_fn."""
        ae = self.bundle.autoencoder(level)
        if ae is self.bundle.ae:
            return self.decode_fn
        scale = self.bundle.config.coarse_latent_scale
        return lambda z: self._decode(ae.decoder, z, ae.cfg.latent_ch, scale)

    @torch.no_grad()
    def level_decode_fn(self, z: np.ndarray) -> np.ndarray:
        """As decode_fn, with the bundle's level decoder: the pixels of its decoded level from the latent above
        (followed by its BundleConfig.level_decoder_noise channels of engine.decode.level_noise, if any)."""
        assert self.bundle.level_decoder is not None, "this bundle has no decoded level"
        return self._decode(self.bundle.level_decoder, z)

    def encode_fn_at(self, level: int, smoothed: bool = True) -> Encode:
        """(H, W, 3) uint8 pixels -> `level`'s scaled latent (C, H/f, W/f), by the autoencoder that holds that level
        (ModelBundle.autoencoder), as the bundle's denoiser learnt it: smoothed first by the bundle's level_blur
        (unless `smoothed` is False)."""
        from gigagen.train.data import blurred

        c = self.bundle.config
        ae, scale = self.bundle.autoencoder(level), c.level_scales[level]
        sigma = c.blur_at(level) if smoothed else 0.0

        def encode(rgb: np.ndarray) -> np.ndarray:
            x = self._tensor(blurred(rgb, sigma).astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0)
            with torch.no_grad(), self._autocast():
                return ae.encode(x).float()[0].cpu().numpy() * scale

        return encode

    def exemplar_bank(self) -> ExemplarBank:
        """The bundle's exemplar (BundleConfig.exemplar) prepared for synthesis, built on first use: each orientation
        encoded into the latent level above the decoded level and read back by the level decoder, as that level is."""
        if self._bank is None:
            c = self.bundle.config
            assert self.bundle.exemplar is not None and c.decoded_level is not None, "this bundle has no exemplar"
            above = c.decoded_level + 1
            pixels = self.bundle.exemplar.pixels.cpu().numpy()
            # unsmoothed, as the bank has always been encoded (no shipped bundle has both an exemplar and level_blur)
            encode = self.encode_fn_at(above, smoothed=False)
            self._bank = build_bank(pixels, encode, self.level_decode_fn, self.bundle.autoencoder(above).cfg.factor)
        return self._bank

    def layout_exemplar(self) -> LayoutExemplar:
        """The bundle's exemplar at the layout level's magnification, for a fragment layout (BundleConfig.layout):
        box-averaged by the zoom between the two levels, with its tissue mask; built on first use."""
        if self._layout is None:
            from gigagen.train.data import downsample, tissue_mask

            assert self.bundle.exemplar is not None, "this bundle has no exemplar"
            zoom = self.bundle.config.layout_zoom
            px = self.bundle.exemplar.pixels.cpu().numpy()
            px = downsample(np.ascontiguousarray(px[: px.shape[0] // zoom * zoom, : px.shape[1] // zoom * zoom]), zoom)
            self._layout = layout_exemplar(px, tissue_mask(px))
        return self._layout

    @torch.no_grad()
    def _decode(self, decoder: torch.nn.Module, z: np.ndarray, latent_ch: int | None = None, scale: float | None = None) -> np.ndarray:
        """z's first latent_ch channels (default the autoencoder's) divided by `scale` (default latent_scale), decoded."""
        zt = self._tensor(z)
        c = self.bundle.config.ae.latent_ch if latent_ch is None else latent_ch
        s = self.bundle.config.latent_scale if scale is None else scale
        if zt.shape[1] == c:
            zt = zt / s
        else:  # the channels past the latent's are a level decoder's noise: standard normal already, not scaled
            zt = torch.cat([zt[:, :c] / s, zt[:, c:]], 1)
        with self._autocast():
            px = decoder(zt)
        self.counters.decode_calls += 1
        return px.float().clamp(-1, 1).cpu().numpy()

"""Model bundles in one safetensors file: weights plus the configuration that rebuilds them.

Layout: tensors "ae.*" (Autoencoder), "unet.*" (UNet) and, optionally, "guide.*" (a smaller, weaker
UNet on the same latents for autoguidance, Karras et al. 2024), "coarse.*" (a second denoiser that samples the
coarser levels BundleConfig.coarse_levels instead of "unet"), "expert.*" (a denoiser that samples BundleConfig.expert_levels at
timesteps from BundleConfig.expert_from on instead of "unet"), "coarse_ae.*" (the autoencoder of every level above the
finest, BundleConfig.coarse_ae) and "level_decoder.*" (a second Decoder of the
autoencoder's architecture that reads one pixel level off the latent level above it; BundleConfig.decoded_level);
safetensors metadata "gigagen.bundle" holds
BundleConfig as JSON (nanoGPT habit: a checkpoint carries its model's arguments). Anything a user can
get wrong (missing file, not safetensors, wrong keys or shapes) raises UserError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gigagen.engine.levels import cond_factors, level_cells, level_scales
from gigagen.engine.exemplar import ExemplarSpec, validate_spec
from gigagen.engine.layout import LayoutSpec, validate_layout
from gigagen.engine.nuclei import StampSpec
from gigagen.errors import UserError
from gigagen.models import header
from gigagen.models.header import DEFAULT_WEIGHTS, META_KEY
from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder, AutoencoderConfig, Decoder

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BundleConfig:
    name: str
    ae: AutoencoderConfig
    unet: UNetConfig
    prediction: str = "v"  # "v" or "eps"
    n_train_steps: int = 1000  # cosine schedule (Nichol & Dhariwal 2021)
    latent_scale: float = 1.0  # multiply autoencoder latents by this for ~unit variance
    magnifications: tuple[float, ...] = (20.0, 5.0, 1.25)  # finest first; last is the layout level
    mpp0: float = 0.5  # micrometres per pixel at magnifications[0]
    tile: int = 32  # latent tile side the denoiser was trained on
    # latent tile side `gigagen slide` samples with by default (None: `tile`). A fully convolutional denoiser
    # trained on `tile` crops can do better with larger tiles (more context, fewer tile edges); measured per model.
    sample_tile: int | None = None
    trained: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    guide: UNetConfig | None = None  # the autoguidance network, when the bundle has one
    autoguidance: float = 1.0  # the weight `gigagen slide` uses by default (1 = the main network alone)
    guide_levels: tuple[int, ...] = ()  # the cascade levels the guide was trained on, and guides (0 = finest)
    # a second denoiser that samples `coarse_levels` in place of `unet` (scripts/set_coarse_network.py): the
    # coarser levels of one small region hold too few pixels for the finest level's network, which learns them
    # by heart; a network with a smaller receptive field can learn their structures instead
    coarse: UNetConfig | None = None
    coarse_levels: tuple[int, ...] = ()
    # a denoiser that samples `expert_levels` at timesteps >= `expert_from` in place of unet (scripts/set_expert.py;
    # eDiff-I's expert denoisers, Balaji et al. 2022): the main network trained on for only the high-noise part of
    # the schedule, where a small network must decide where nuclei and fibres go, so its capacity goes there alone.
    # Each sampling step still costs one network pass.
    expert: UNetConfig | None = None
    expert_levels: tuple[int, ...] = ()
    expert_from: int = 0
    # conditioning augmentation: the noise timestep `gigagen slide` noises each parent level to by default
    # (0 = clean parents); nonzero only for a denoiser trained with it (unet.cond_aug)
    cond_aug: int = 0
    # classifier-free guidance weights `gigagen slide` uses by default, one per refinement level finest first
    # (the layout level has no parent); () = 1 at every level. Measured per model, like autoguidance.
    guidance: tuple[float, ...] = ()
    # DDIM steps `gigagen slide` takes by default at each level, finest first with the layout level; () =
    # DEFAULT_STEPS at every level. The coarser levels have 1/16 and 1/256 of the finest level's pixels, so
    # more steps there cost little; measured per model (the model card; scripts/set_sampling_defaults.py --steps).
    steps: tuple[int, ...] = ()
    # levels held as pixels folded into channels instead of latents (gigagen.engine.levels), and the factor
    # that brings their [-1, 1] pixel values to about unit variance, as latent_scale does for latents
    pixel_levels: tuple[int, ...] = ()
    pixel_scale: float = 1.0
    # a pixel level under the latent level of its own magnification that the cascade does not sample but reads
    # off that latent with the bundle's level decoder (`gigagen train --decoder-of B --decoder-level K`)
    decoded_level: int | None = None
    # with a decoded level: the nucleus stamps painted into it (gigagen.engine.nuclei; `gigagen train --nucleus-stamps`)
    nucleus_stamps: StampSpec | None = None
    # the decoded level's nuclei and fibres copied from an exemplar of real pixels at its magnification, guided by
    # the level decoder's reading of the latent (engine.exemplar; the pixels are the bundle's "exemplar.pixels")
    exemplar: ExemplarSpec | None = None
    # with an exemplar: the layout level (the coarsest) made of deformed fragments of that exemplar, brought to the
    # layout's magnification, instead of sampled (engine.layout; scripts/set_sampling_defaults.py --layout)
    layout: LayoutSpec | None = None
    # with a decoded level: standard normal channels its level decoder reads next to the latent, drawn per
    # (seed, level, position) (engine.decode.level_noise), so it draws detail the latent does not fix (0: none)
    level_decoder_noise: int = 0
    # Gaussian sigma, in pixels at each level's own magnification (finest first), of the smoothing a real image
    # gets before it is encoded at that level, in training and wherever a real level is read for this bundle
    # (train.loop.level_array); () = none. A level that only conditions the level below it can be smoothed to its
    # structure: its generator then draws structure, not texture, and the level below learns its own detail
    # (nuclei) from its own pixels. The finest level, the one gigagen slide draws, is never smoothed.
    level_blur: tuple[float, ...] = ()
    # the autoencoder of every level above the finest when it is not `ae` (`gigagen train --coarse-from B`): the
    # finest level then lives in a latent of its own, e.g. f4, where a nucleus covers 3-4 latent pixels instead of
    # the 1-2 of B's f8 (model card, 2026-12-05 f4 probe), while the coarser levels stay B's latents, sampled by B's
    # denoiser as the coarse network (`coarse`, at every level above the finest), which keeps B's hours of training
    # on them. Only the finest level is decoded into the slide, by `ae`; this one decodes layout.png.
    coarse_ae: AutoencoderConfig | None = None
    coarse_latent_scale: float = 1.0  # latent_scale of coarse_ae's latents

    @property
    def fragment_level(self) -> int | None:
        """The layout level (the coarsest) when it is made of fragments of the exemplar (BundleConfig.layout), else None."""
        return len(self.magnifications) - 1 if self.layout is not None else None

    @property
    def layout_zoom(self) -> int:
        """How many exemplar pixels one layout pixel averages per side (a fragment layout's zoom, BundleConfig.layout)."""
        assert self.decoded_level is not None
        return round(self.magnifications[self.decoded_level] / self.magnifications[-1])

    def blur_at(self, level: int) -> float:
        """The smoothing sigma of `level` (level_blur), 0 for none."""
        return self.level_blur[level] if self.level_blur else 0.0

    @property
    def guidance_per_level(self) -> tuple[float, ...]:
        """The default guidance weight of every refinement level, finest first."""
        return header.guidance_per_level(self.guidance, len(self.magnifications))

    def level_noise(self, seed: int) -> tuple[int, int, int] | None:
        """(seed, decoded level, channels): the noise the level decoder reads in a slide of this seed
        (engine.decode.LevelNoise), or None for a deterministic level decoder."""
        if not self.level_decoder_noise:
            return None
        assert self.decoded_level is not None  # validate_config
        return seed, self.decoded_level, self.level_decoder_noise

    @property
    def steps_per_level(self) -> tuple[int, ...]:
        """The default DDIM steps of every level, finest first, the layout level included."""
        return header.steps_per_level(self.steps, len(self.magnifications))

    @property
    def sampling_tile(self) -> int:
        """The latent tile side sampling uses unless told otherwise."""
        return self.sample_tile or self.tile

    @property
    def level_cells(self) -> tuple[int, ...]:
        """Cell side in pixels of every level's array, finest first (the autoencoder's factor for latent levels)."""
        coarse = self.coarse_ae.factor if self.coarse_ae is not None else None
        return level_cells(self.ae.factor, self.ae.latent_ch, len(self.magnifications), self.pixel_levels, coarse)

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of every level's array, finest first (pixel levels hold as many as the latent)."""
        coarse = self.coarse_ae.latent_ch if self.coarse_ae is not None else self.ae.latent_ch
        return (self.ae.latent_ch,) + (coarse,) * (len(self.magnifications) - 1)

    @property
    def parent_factors(self) -> tuple[int, ...]:
        """Per level, finest first: its cells per parent cell and side, the conditioning's upsampling (0: layout)."""
        return cond_factors(self.magnifications, self.level_cells)

    def expert_at(self, level: int) -> bool:
        """Whether the expert network takes some of `level`'s steps (those from expert_from on)."""
        return self.expert is not None and level in self.expert_levels

    def samples_expert(self, level: int, t: int) -> bool:
        """Whether the expert network (not the main UNet) denoises `level` at timestep `t`."""
        return self.expert_at(level) and t >= self.expert_from

    def samples_coarse(self, level: int) -> bool:
        """Whether the coarse network (not the main UNet) samples `level`."""
        return self.coarse is not None and level in self.coarse_levels

    @property
    def level_scales(self) -> tuple[float, ...]:
        """What each level's raw array (latent, or folded pixels in [-1, 1]) is multiplied by for the denoiser."""
        coarse = self.coarse_latent_scale if self.coarse_ae is not None else None
        return level_scales(self.latent_scale, self.pixel_scale, len(self.magnifications), self.pixel_levels, coarse)

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "BundleConfig":
        d = json.loads(text)
        if d.pop("format_version", None) != FORMAT_VERSION:
            raise ValueError("unsupported bundle format version")
        d["ae"] = _dataclass_from(AutoencoderConfig, d["ae"])
        if d.get("coarse_ae") is not None:
            d["coarse_ae"] = _dataclass_from(AutoencoderConfig, d["coarse_ae"])
        d["unet"] = _dataclass_from(UNetConfig, d["unet"])
        for net in ("guide", "coarse", "expert"):
            if d.get(net) is not None:
                d[net] = _dataclass_from(UNetConfig, d[net])
        d["magnifications"] = tuple(d["magnifications"])
        if d.get("nucleus_stamps") is not None:
            d["nucleus_stamps"] = StampSpec.from_dict(d["nucleus_stamps"])
        if d.get("exemplar") is not None:
            d["exemplar"] = _dataclass_from(ExemplarSpec, d["exemplar"])
        if d.get("layout") is not None:
            d["layout"] = _dataclass_from(LayoutSpec, d["layout"])
        return _dataclass_from(BundleConfig, d)


def _dataclass_from(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class ExemplarPixels(torch.nn.Module):
    """The exemplar's real pixels (H, W, 3) uint8 as a buffer, so they are saved and loaded with the networks."""

    def __init__(self, spec: ExemplarSpec):
        super().__init__()
        self.register_buffer("pixels", torch.zeros(spec.height, spec.width, 3, dtype=torch.uint8))


@dataclass
class ModelBundle:
    config: BundleConfig
    ae: Autoencoder
    unet: UNet
    identity: str  # "name@sha256-prefix" of the file, recorded in every slide's metadata
    guide: UNet | None = None
    level_decoder: Decoder | None = None  # reads config.decoded_level off the latent above it
    coarse: UNet | None = None  # samples config.coarse_levels instead of unet
    expert: UNet | None = None  # samples config.expert_levels from timestep config.expert_from on instead of unet
    coarse_ae: Autoencoder | None = None  # holds every level above the finest (config.coarse_ae)
    exemplar: ExemplarPixels | None = None  # the decoded level's exemplar (config.exemplar)
    compact: bool = False  # the file stores weights in bf16 (save_bundle's compact): copies of it should too

    def autoencoder(self, level: int) -> Autoencoder:
        """The autoencoder whose latent holds `level`: the coarse one above the finest level, when there is one."""
        return self.coarse_ae if self.coarse_ae is not None and level > 0 else self.ae

    def denoiser(self, level: int, t: int | None = None) -> UNet:
        """The network that samples `level` at timestep `t`: the expert at its levels and timesteps, the coarse one
        at its levels, the main one elsewhere. t None: the network of the level's low-noise steps."""
        if self.expert is not None and t is not None and self.config.samples_expert(level, t):
            return self.expert
        return self.coarse if self.coarse is not None and self.config.samples_coarse(level) else self.unet


def validate_config(cfg: BundleConfig) -> None:
    """Cross-field checks: the engine relies on these."""
    if cfg.prediction not in ("v", "eps"):
        raise ValueError(f"prediction must be 'v' or 'eps', not {cfg.prediction!r}")
    if cfg.ae.latent_ch != cfg.unet.latent_ch:
        raise ValueError("autoencoder and UNet latent channels differ")
    if cfg.unet.n_levels < len(cfg.magnifications):
        raise ValueError("UNet has fewer level embeddings than the cascade has levels")
    if cfg.tile % cfg.unet.divisor:
        raise ValueError("tile must be a multiple of the UNet divisor")
    if cfg.sample_tile is not None and (cfg.sample_tile < 1 or cfg.sample_tile % cfg.unet.divisor
                                        or (cfg.guide is not None and cfg.sample_tile % cfg.guide.divisor)):
        raise ValueError("sample_tile must be a positive multiple of the UNet divisor")
    if cfg.guide is not None and (cfg.guide.latent_ch != cfg.unet.latent_ch or cfg.guide.n_levels != cfg.unet.n_levels
                                  or cfg.tile % cfg.guide.divisor):
        raise ValueError("the guide UNet must share the main UNet's latent channels, levels and tile divisor")
    if cfg.autoguidance < 0 or (cfg.guide is None and cfg.autoguidance != 1.0):
        raise ValueError("autoguidance must be >= 0, and 1 for a bundle without a guide network")
    if not 0 <= cfg.cond_aug < cfg.n_train_steps or (cfg.cond_aug and not cfg.unet.cond_aug):
        raise ValueError("cond_aug must be a timestep in [0, n_train_steps), and 0 for a denoiser trained without conditioning augmentation")
    if cfg.guidance and (len(cfg.guidance) != len(cfg.magnifications) - 1 or min(cfg.guidance) < 0):
        raise ValueError("guidance must give one weight >= 0 per refinement level (all levels but the layout), or none")
    if cfg.steps and (len(cfg.steps) != len(cfg.magnifications) or not all(1 <= n <= cfg.n_train_steps for n in cfg.steps)):
        raise ValueError("steps must give one count in 1..n_train_steps per level (the layout level included), or none")
    cond_factors(cfg.magnifications, cfg.level_cells)  # raises ValueError for pixel levels the cascade cannot use
    if cfg.pixel_scale <= 0:
        raise ValueError("pixel_scale must be positive")
    k = cfg.decoded_level
    if k is not None and (k not in cfg.pixel_levels or cfg.magnifications[k] != cfg.magnifications[k + 1]):
        raise ValueError(f"decoded_level {k} must be a pixel level under the latent level of its own magnification")
    st = cfg.nucleus_stamps
    if st is not None and (k is None or st.radius <= 0 or st.spacing < 0 or st.window < 1 or st.scale <= 0):
        raise ValueError("nucleus_stamps need a decoded level, a positive radius, window and scale, and a spacing >= 0")
    if cfg.level_decoder_noise < 0 or (cfg.level_decoder_noise and k is None):
        raise ValueError("level_decoder_noise must be >= 0, and 0 without a decoded level")
    if cfg.exemplar is not None:
        if k is None or cfg.nucleus_stamps is not None or cfg.level_decoder_noise:
            raise ValueError("an exemplar needs a decoded level without nucleus stamps or level decoder noise")
        validate_spec(cfg.exemplar, cfg.ae.factor)
    if cfg.layout is not None:
        _validate_layout(cfg)
    if cfg.level_blur and (len(cfg.level_blur) != len(cfg.magnifications) or min(cfg.level_blur) < 0 or cfg.level_blur[0] != 0):
        raise ValueError("level_blur must give one sigma >= 0 per level, 0 at the finest (the level gigagen slide draws), or none")
    if cfg.guide is not None and not _names_levels(cfg.guide_levels, cfg):
        raise ValueError("guide_levels must name one or more of the cascade's levels")
    _validate_coarse(cfg)
    _validate_expert(cfg)
    _validate_coarse_ae(cfg)


def _validate_layout(cfg: BundleConfig) -> None:
    """A fragment layout needs the exemplar it cuts fragments from, a latent layout level, and a whole zoom from the
    exemplar's level to it that leaves the exemplar at least a few latent cells on a side."""
    if cfg.exemplar is None or cfg.decoded_level is None:
        raise ValueError("a fragment layout needs an exemplar (BundleConfig.exemplar)")
    top = len(cfg.magnifications) - 1
    if top in cfg.pixel_levels:
        raise ValueError("a fragment layout needs a latent layout level")
    zoom = cfg.magnifications[cfg.decoded_level] / cfg.magnifications[top]
    if zoom != int(zoom) or min(cfg.exemplar.height, cfg.exemplar.width) // zoom < 4 * cfg.level_cells[top]:
        raise ValueError("a fragment layout needs a whole zoom from the exemplar's level to the layout level, and an "
                         "exemplar of at least 4 latent cells a side there")
    validate_layout(cfg.layout)


def _names_levels(levels: tuple[int, ...], cfg: BundleConfig) -> bool:
    """`levels` names one or more of the cascade's levels, and nothing else."""
    return bool(levels) and set(levels) <= set(range(len(cfg.magnifications)))


def _stands_in(net: UNetConfig, cfg: BundleConfig, latent_ch: int | None = None) -> bool:
    """A network can sample some of the main UNet's steps: the same latent channels (or `latent_ch`, those of the
    levels it samples) and level embeddings, and a tile divisor that divides the main one's (the run's tiling
    follows the main UNet's)."""
    want = cfg.unet.latent_ch if latent_ch is None else latent_ch
    return net.latent_ch == want and net.n_levels == cfg.unet.n_levels and cfg.unet.divisor % net.divisor == 0


def _validate_coarse(cfg: BundleConfig) -> None:
    """The coarse network works on the main one's latents and tiles (the run's tiling follows the main UNet's
    divisor, so the coarse one's must divide it) at one or more of the cascade's levels, or is absent."""
    c = cfg.coarse
    if c is None:
        if cfg.coarse_levels:
            raise ValueError("coarse_levels need a coarse network")
        return
    if not _stands_in(c, cfg, cfg.coarse_ae.latent_ch if cfg.coarse_ae is not None else None):
        raise ValueError("the coarse UNet must share the main UNet's latent channels (the coarse autoencoder's, with one) "
                         "and levels, and divide its tile divisor")
    if not _names_levels(cfg.coarse_levels, cfg):
        raise ValueError("coarse_levels must name one or more of the cascade's levels")


def _validate_expert(cfg: BundleConfig) -> None:
    """The expert stands in for the main network at some of its levels (not the coarse network's), on the same
    latents and tiles, from a timestep inside the schedule on; or is absent."""
    e = cfg.expert
    if e is None:
        if cfg.expert_levels or cfg.expert_from:
            raise ValueError("expert_levels and expert_from need an expert network")
        return
    if not _stands_in(e, cfg):
        raise ValueError("the expert UNet must share the main UNet's latent channels and levels, and divide its tile divisor")
    if not _names_levels(cfg.expert_levels, cfg) or set(cfg.expert_levels) & set(cfg.coarse_levels if cfg.coarse else ()):
        raise ValueError("expert_levels must name one or more of the cascade's levels the main network samples")
    if not 0 < cfg.expert_from < cfg.n_train_steps:
        raise ValueError("expert_from must be a timestep in 1..n_train_steps-1")
    if e.cond_aug != cfg.unet.cond_aug or e.cond_channels != cfg.unet.cond_channels:
        raise ValueError("the expert must read its parent as the main UNet does (its channels, conditioning augmentation or not)")


def _validate_coarse_ae(cfg: BundleConfig) -> None:
    """A coarse autoencoder holds every level above the finest as latents, which the coarse network samples, all of
    them, and the main UNet reads as its parent; without one the main UNet reads its own kind of latent."""
    ca = cfg.coarse_ae
    if ca is None:
        if cfg.unet.cond_channels != cfg.unet.latent_ch:
            raise ValueError("the UNet reads a parent of other channels than its latent only with a coarse autoencoder")
        return
    if cfg.coarse is None or tuple(cfg.coarse_levels) != tuple(range(1, len(cfg.magnifications))):
        raise ValueError("a coarse autoencoder needs a coarse network that samples every level above the finest")
    if cfg.coarse.cond_channels != ca.latent_ch or cfg.unet.cond_channels != ca.latent_ch:
        raise ValueError("the coarse network's parents and the main UNet's parent must be the coarse autoencoder's latents")
    if cfg.pixel_levels or cfg.decoded_level is not None or cfg.level_blur or cfg.cond_aug:
        raise ValueError("a coarse autoencoder holds every coarser level as clean latents: no pixel levels, decoded level, "
                         "level smoothing or conditioning augmentation")
    if cfg.guide is not None and (set(cfg.guide_levels) != {0} or cfg.guide.cond_channels != ca.latent_ch):
        raise ValueError("with a coarse autoencoder a guide can guide the finest level only, reading the coarse autoencoder's latents")
    if cfg.coarse_latent_scale <= 0:
        raise ValueError("coarse_latent_scale must be positive")


# a bundle's networks in save_bundle's argument order: their ModelBundle fields and tensor prefixes ("NAME.*")
NETWORKS = ("ae", "unet", "guide", "level_decoder", "coarse", "expert", "coarse_ae", "exemplar")


def _networks(*modules: torch.nn.Module | None) -> dict[str, torch.nn.Module]:
    """A bundle's networks (in NETWORKS order) by tensor prefix, the absent ones left out."""
    return {name: m for name, m in zip(NETWORKS, modules, strict=True) if m is not None}


# layers whose weights bf16 autocast casts to bf16 before use (on CPU and CUDA): stored in bf16, they give the same bits
AUTOCAST_BF16_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)


def _state(name: str, m: torch.nn.Module, compact: bool) -> dict[str, torch.Tensor]:
    """A network's tensors under `name.`; with `compact`, the weights and biases of AUTOCAST_BF16_LAYERS in bf16."""
    low = {f"{prefix}.{k}" if prefix else k for prefix, layer in m.named_modules() if isinstance(layer, AUTOCAST_BF16_LAYERS)
           for k, _ in layer.named_parameters(recurse=False)} if compact else set()
    return {f"{name}.{k}": v.detach().cpu().to(torch.bfloat16 if k in low else v.dtype).contiguous()
            for k, v in m.state_dict().items()}


def save_bundle(path: Path, cfg: BundleConfig, ae: Autoencoder, unet: UNet, guide: UNet | None = None,
                level_decoder: Decoder | None = None, coarse: UNet | None = None, expert: UNet | None = None,
                coarse_ae: Autoencoder | None = None, exemplar: ExemplarPixels | None = None, *,
                compact: bool = False) -> None:
    """Write weights and config atomically (temp file, then rename). With `compact`, convolution and linear weights are
    stored in bf16 (half the size): sampling in bf16 autocast (the default precision) gives the same pixels, since it
    rounds them so anyway; fp32 sampling and training then start from the rounded weights. load_bundle reads both."""
    validate_config(cfg)
    if (guide is None) != (cfg.guide is None):
        raise ValueError("a guide network is saved exactly when the configuration names one")
    if (coarse is None) != (cfg.coarse is None):
        raise ValueError("a coarse network is saved exactly when the configuration names one")
    if (expert is None) != (cfg.expert is None):
        raise ValueError("an expert network is saved exactly when the configuration names one")
    if (level_decoder is None) != (cfg.decoded_level is None):
        raise ValueError("a level decoder is saved exactly when the configuration names a decoded level")
    if (coarse_ae is None) != (cfg.coarse_ae is None):
        raise ValueError("a coarse autoencoder is saved exactly when the configuration names one")
    if (exemplar is None) != (cfg.exemplar is None):
        raise ValueError("exemplar pixels are saved exactly when the configuration names an exemplar")
    modules = _networks(ae, unet, guide, level_decoder, coarse, expert, coarse_ae, exemplar)
    tensors = {k: v for name, m in modules.items() for k, v in _state(name, m, compact).items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: cfg.to_json()})
    tmp.replace(path)


def save_like(path: Path, bundle: ModelBundle, cfg: BundleConfig, *, compact: bool = False,
              **networks: torch.nn.Module | None) -> None:
    """save_bundle of `bundle`'s networks under the configuration `cfg`, with those named in `networks` (ModelBundle
    field names, NETWORKS) replaced: a script or run that changes one part of a bundle keeps every other part."""
    unknown = set(networks) - set(NETWORKS)
    if unknown:
        raise TypeError(f"not bundle networks: {sorted(unknown)}")
    save_bundle(path, cfg, *(networks[n] if n in networks else getattr(bundle, n) for n in NETWORKS), compact=compact)


def fresh_path(path: str | Path) -> Path:
    """`path` for a new bundle, or a UserError when a file is there: scripts that rewrite a bundle never overwrite one."""
    path = Path(path)
    if path.exists():
        raise UserError(f"{path} exists; choose a new --out (the original is never overwritten)")
    return path


def save_new(path: str | Path, bundle: ModelBundle, cfg: BundleConfig, *, compact: bool = False,
             **networks: torch.nn.Module | None) -> None:
    """save_like into a new file (fresh_path); a configuration validate_config refuses is a one-line UserError."""
    path = fresh_path(path)
    try:
        save_like(path, bundle, cfg, compact=compact, **networks)
    except ValueError as exc:  # e.g. a network this bundle's tiling cannot run, levels another network samples
        raise UserError(f"refused: {exc}") from None


def _file_identity(path: Path, name: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{name}@sha256:{h.hexdigest()[:16]}"


def bundle_identity(path: Path) -> str:
    """The identity load_bundle gives the bundle file at `path`, from its configuration and bytes alone (no networks
    built); UserError when the file is not a gigagen bundle."""
    return _file_identity(Path(path), read_bundle_config(path).name)


def read_bundle_config(path: Path) -> BundleConfig:
    """Read only the configuration (no weights); UserError when the file is not a gigagen bundle."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None
    if META_KEY not in meta:
        raise UserError(f"checkpoint {path} has no gigagen bundle configuration; was it written by gigagen train?")
    try:
        cfg = BundleConfig.from_json(meta[META_KEY])
        validate_config(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint {path} has an incompatible configuration: {exc}") from None
    return cfg


def load_bundle(path: Path | None = None, device: torch.device | str = "cpu") -> ModelBundle:
    """Rebuild the autoencoder and UNet from a bundle file (default: the embedded model), in eval mode."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    cfg = read_bundle_config(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is corrupt ({exc})") from None
    ae, unet = Autoencoder(cfg.ae), UNet(cfg.unet)
    guide = UNet(cfg.guide) if cfg.guide is not None else None
    level_decoder = Decoder(cfg.ae, cfg.level_decoder_noise) if cfg.decoded_level is not None else None
    coarse = UNet(cfg.coarse) if cfg.coarse is not None else None
    expert = UNet(cfg.expert) if cfg.expert is not None else None
    coarse_ae = Autoencoder(cfg.coarse_ae) if cfg.coarse_ae is not None else None
    exemplar = ExemplarPixels(cfg.exemplar) if cfg.exemplar is not None else None
    modules = _networks(ae, unet, guide, level_decoder, coarse, expert, coarse_ae, exemplar)
    known = tuple(name + "." for name in modules)
    stray = sorted({k.split(".")[0] for k in state if not k.startswith(known)})
    if stray:
        raise UserError(f"checkpoint {path} does not match its configuration: unexpected tensors {stray}")
    for name, module in modules.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"checkpoint {path} does not match its configuration: {first}") from None
    for module in modules.values():
        module.to(device).eval().requires_grad_(False)
    return ModelBundle(cfg, ae, unet, _file_identity(path, cfg.name), guide, level_decoder, coarse, expert, coarse_ae, exemplar,
                       compact=any(v.dtype == torch.bfloat16 for v in state.values()))

"""Model bundles in one safetensors file: weights plus the configuration that rebuilds them.

Layout: tensors "ae.*" (Autoencoder) and "unet.*" (UNet); safetensors metadata "gigagen.bundle" holds
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

from gigagen.errors import UserError
from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder, AutoencoderConfig

META_KEY = "gigagen.bundle"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"


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
    trained: bool = False
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def level_factors(self) -> tuple[int, ...]:
        """Integer zoom factor between level i and level i+1."""
        return tuple(int(round(a / b)) for a, b in zip(self.magnifications, self.magnifications[1:]))

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "BundleConfig":
        d = json.loads(text)
        if d.pop("format_version", None) != FORMAT_VERSION:
            raise ValueError("unsupported bundle format version")
        d["ae"] = _dataclass_from(AutoencoderConfig, d["ae"])
        d["unet"] = _dataclass_from(UNetConfig, d["unet"])
        d["magnifications"] = tuple(d["magnifications"])
        return _dataclass_from(BundleConfig, d)


def _dataclass_from(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class ModelBundle:
    config: BundleConfig
    ae: Autoencoder
    unet: UNet
    identity: str  # "name@sha256-prefix" of the file, recorded in every slide's metadata


def validate_config(cfg: BundleConfig) -> None:
    """Cross-field checks: the engine relies on these."""
    if cfg.prediction not in ("v", "eps"):
        raise ValueError(f"prediction must be 'v' or 'eps', not {cfg.prediction!r}")
    if cfg.ae.latent_ch != cfg.unet.latent_ch:
        raise ValueError("autoencoder and UNet latent channels differ")
    if cfg.unet.n_levels < len(cfg.magnifications):
        raise ValueError("UNet has fewer level embeddings than the cascade has levels")
    for a, b in zip(cfg.magnifications, cfg.magnifications[1:]):
        if b >= a or abs(a / b - round(a / b)) > 1e-6:
            raise ValueError("magnifications must decrease by integer factors")
    if cfg.tile % cfg.unet.divisor:
        raise ValueError("tile must be a multiple of the UNet divisor")


def save_bundle(path: Path, cfg: BundleConfig, ae: Autoencoder, unet: UNet) -> None:
    """Write weights and config atomically (temp file, then rename)."""
    validate_config(cfg)
    tensors = {f"ae.{k}": v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    tensors |= {f"unet.{k}": v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: cfg.to_json()})
    tmp.replace(path)


def _file_identity(path: Path, name: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{name}@sha256:{h.hexdigest()[:16]}"


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
    for prefix, module in (("ae.", ae), ("unet.", unet)):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"checkpoint {path} does not match its configuration: {first}") from None
    ae.to(device).eval().requires_grad_(False)
    unet.to(device).eval().requires_grad_(False)
    return ModelBundle(cfg, ae, unet, _file_identity(path, cfg.name))

"""`gigagen evaluate`: generated 20x tiles against the held-out band of a real region (and real against real)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigagen.errors import UserError
from gigagen.train import data as D
from gigagen.train import metrics as M


@dataclass
class TileSets:
    generated: np.ndarray  # (N, T, T, 3) uint8 at mpp0
    held: np.ndarray  # held-out real tiles
    train: np.ndarray  # training-region real tiles (the memorisation bank and real-vs-real reference)
    held_rgb: np.ndarray  # the whole held-out band (for autoencoder fidelity)


def slide_tiles(path: str | Path, tile: int, max_tiles: int, seed: int, mpp0: float = 0.5) -> np.ndarray:
    """Random tissue tiles from level 0 of a gigagen slide (directory or .ome.zarr) or from an image file."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".zarr":
        from gigagen.io.omezarr import open_slide

        reader = open_slide(p)
        if abs(reader.mpp - mpp0) > 0.05 * mpp0:
            raise UserError(f"{p} is at {reader.mpp} um/px; evaluation compares tiles at {mpp0} um/px")
        lvl = next((k for k, (h, w) in enumerate(reader.level_shapes) if max(h, w) <= 2048), len(reader.level_shapes) - 1)
        small = reader.read_region(lvl, 0, 0, reader.level_shapes[lvl][1], reader.level_shapes[lvl][0])
        mask = D.tissue_mask(small)
        scale = 2**lvl
        rng = np.random.default_rng(seed)
        tiles, tries = [], 0
        while len(tiles) < max_tiles and tries < 50 * max_tiles:
            tries += 1
            x = int(rng.integers(0, max(reader.width - tile, 0) + 1))
            y = int(rng.integers(0, max(reader.height - tile, 0) + 1))
            m = mask[y // scale : (y + tile) // scale + 1, x // scale : (x + tile) // scale + 1]
            if m.size and m.mean() >= 0.5:
                tiles.append(reader.read_region(0, x, y, tile, tile))
        if not tiles:
            raise UserError(f"{p}: no tissue tiles found at level 0")
        return np.stack(tiles)
    rgb, mpp = D.read_image(p, None if p.suffix.lower() not in D.PIL_SUFFIXES else mpp0)
    rgb = D.resize(rgb, mpp / mpp0)
    got, _ = M.grid_tiles(rgb, tile, tile // 2, 0.5)
    if len(got) == 0:
        raise UserError(f"{p}: no tissue tiles found")
    rng = np.random.default_rng(seed)
    return got[rng.permutation(len(got))[:max_tiles]]


def split_reference(region: str | Path, holdout_frac: float, mpp: float | None = None, mpp0: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(training part, held-out bottom band) of a reference region at mpp0, split as `gigagen train` splits it."""
    rgb, file_mpp = D.read_image(region, mpp)
    return D.split_holdout(D.resize(rgb, file_mpp / mpp0), holdout_frac)


def reference_tiles(region: str | Path, holdout_frac: float, tile: int, mpp: float | None, mpp0: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held-out tiles at stride tile/2, training tiles at stride tile/4, held-out band) of the reference region."""
    train, held = split_reference(region, holdout_frac, mpp, mpp0)
    held_tiles, _ = M.grid_tiles(held, tile, tile // 2, 0.5)
    train_tiles, _ = M.grid_tiles(train, tile, tile // 4, 0.5)
    if len(held_tiles) < 2:
        raise UserError(f"the held-out band of {region} has fewer than 2 tissue tiles of {tile} px")
    return held_tiles, train_tiles, held


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")


def tile_stats(tiles: np.ndarray, bank: np.ndarray | None) -> dict[str, Any]:
    """bank None: no memorisation check (the tiles come from the bank itself)."""
    stain = M.stain_concentrations(tiles)
    nuc = M.nuclei(tiles)
    sim = M.nearest_similarity(tiles, bank)[0] if bank is not None else np.full(len(tiles), np.nan)
    return {
        "n": len(tiles), "stain": stain, "nuclei": nuc, "hf": M.high_freq_energy(tiles),
        "feat": M.random_conv_features(tiles, dim=16), "nn_sim": sim,
    }


def compare(a: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics of set a, and its distances to the reference set."""
    return {
        "tiles": a["n"],
        "H_mean": float(a["stain"][:, 0].mean()), "E_mean": float(a["stain"][:, 1].mean()),
        "W1_H": _w1(a["stain"][:, 0], ref["stain"][:, 0]), "W1_E": _w1(a["stain"][:, 1], ref["stain"][:, 1]),
        "nuclei_per_mm2": a["nuclei"].density_per_mm2,
        "nucleus_area_median_um2": float(np.median(a["nuclei"].areas_um2)) if len(a["nuclei"].areas_um2) else float("nan"),
        "W1_nucleus_area_um2": _w1(a["nuclei"].areas_um2, ref["nuclei"].areas_um2),
        "hf_energy": float(a["hf"].mean()),
        "FD_randconv": max(M.frechet_distance(a["feat"], ref["feat"]), 0.0),
        "nn_train_ncc_median": float(np.median(a["nn_sim"])), "nn_train_ncc_max": float(a["nn_sim"].max()),
    }


def slide_model(slide: str | Path) -> str | None:
    """The bundle file a gigagen slide directory was generated with (its run.json), while that file still holds the
    same model (identity checked); else None, the embedded default. The autoencoder row should describe the slide's
    model: a fine-tuned decoder reconstructs differently from the default's."""
    from gigagen.models.checkpoint import bundle_identity

    try:
        model = json.loads((Path(slide) / "run.json").read_text())["model"]
        path, identity = Path(model["checkpoint"]), model["identity"]
    except (OSError, ValueError, KeyError, TypeError):  # not a slide directory, or an older or foreign run.json
        return None
    if not path.is_file():  # "embedded default", or the bundle moved away since
        return None
    try:
        return str(path) if bundle_identity(path) == identity else None
    except UserError:  # replaced by something unreadable: the embedded model, as without run.json
        return None


def evaluate(slide: str, reference: str, tile: int = 256, max_tiles: int = 64, holdout_frac: float = 0.2,
             mpp: float | None = None, checkpoint: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Rows 'generated' and 'train (real-vs-real)', each compared with the held-out band; plus AE fidelity."""
    held, train, held_rgb = reference_tiles(reference, holdout_frac, tile, mpp)
    gen = slide_tiles(slide, tile, max_tiles, seed)
    rng = np.random.default_rng(seed)
    train_sub = train[rng.permutation(len(train))[: max(max_tiles, len(held))]]
    ref = tile_stats(held, train)
    rows = {
        "generated": compare(tile_stats(gen, train), ref),
        "train (real)": compare(tile_stats(train_sub, None), ref),
        "held-out (real)": compare(ref, ref),
    }
    out: dict[str, Any] = {"rows": rows, "tile": tile, "holdout_frac": holdout_frac, "slide": str(slide), "reference": str(reference)}
    from gigagen.models.checkpoint import load_bundle

    bundle = load_bundle(checkpoint or slide_model(slide))  # None: the embedded default
    out["ae_psnr_db"], out["ae_ssim"] = M.ae_reconstruction(bundle.ae, held_rgb)
    out["model"] = bundle.identity
    out["_tiles"] = {"generated": gen, "held": held}
    return out


COLUMNS = [
    ("tiles", "tiles", "{:.0f}"), ("H_mean", "H mean", "{:.4f}"), ("E_mean", "E mean", "{:.4f}"),
    ("W1_H", "W1 H", "{:.4f}"), ("W1_E", "W1 E", "{:.4f}"), ("nuclei_per_mm2", "nuclei/mm2", "{:.0f}"),
    ("nucleus_area_median_um2", "area med um2", "{:.1f}"), ("W1_nucleus_area_um2", "W1 area", "{:.2f}"),
    ("hf_energy", "HF energy", "{:.4f}"), ("FD_randconv", "FD randconv", "{:.3f}"),
    ("nn_train_ncc_median", "NN-train NCC med", "{:.3f}"), ("nn_train_ncc_max", "NN-train NCC max", "{:.3f}"),
]


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per tile set; distances (W1, FD) are to the held-out real tiles."""
    head = "| set | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, r in result["rows"].items():
        cells = ["n/a" if isinstance(r[k], float) and np.isnan(r[k]) else fmt.format(r[k]) for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "ae_psnr_db" in result:
        lines.append(f"\nautoencoder on held-out tiles ({result['model']}): PSNR {result['ae_psnr_db']:.2f} dB, SSIM {result['ae_ssim']:.3f}")
    lines.append("W1 = Wasserstein-1 distance to the held-out real tiles; FD randconv = Frechet distance in the features of a "
                 "fixed seeded random conv net; NN-train NCC = normalised cross-correlation (64 px grey, 8 orientations) with the "
                 "nearest of the training crops (stride 64 px; 1 = copy); the held-out row is the real-vs-real reference for it.")
    return "\n".join(lines)


def contact_sheet(gen: np.ndarray, real: np.ndarray, path: str | Path, n: int = 6, size: int = 256) -> None:
    """PNG: a row of generated 20x tiles above a row of held-out real tiles, labelled."""
    from PIL import Image, ImageDraw

    n = min(n, len(gen), len(real))
    pad, label = 4, 18
    w = n * (size + pad) + pad
    sheet = Image.new("RGB", (w, 2 * (size + label + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate((("generated (gigagen, 20x, 0.5 um/px)", gen), ("real, held-out band of CMU-1-Small-Region", real))):
        y = pad + r * (size + label + pad)
        draw.text((pad, y + 2), name, fill="black")
        for i in range(n):
            sheet.paste(Image.fromarray(tiles[i][:size, :size]), (pad + i * (size + pad), y + label))
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)  # small PNGs for docs/


def overview(slide: str | Path, path: str | Path, max_side: int = 1024) -> None:
    """PNG of a whole generated slide, from the first pyramid level whose longer side is <= max_side."""
    from PIL import Image

    from gigagen.io.omezarr import open_slide

    reader = open_slide(slide)
    lvl = next((k for k, (h, w) in enumerate(reader.level_shapes) if max(h, w) <= max_side), len(reader.level_shapes) - 1)
    h, w = reader.level_shapes[lvl]
    im = Image.fromarray(reader.read_region(lvl, 0, 0, w, h))
    im.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)

"""gigagen evaluate: each metric responds to what it claims to measure; the command prints a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gigagen.cli import main
from gigagen.models.checkpoint import BundleConfig, save_bundle
from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder, AutoencoderConfig
from gigagen.train import metrics as M
from tests.test_train import PINK, PURPLE, fake_he


def disks(n: int, radius: int, size: int = 256) -> np.ndarray:
    """All-tissue pink tile with n purple disks on a grid."""
    img = np.full((size, size, 3), PINK, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    side = int(np.ceil(np.sqrt(n)))
    step = size // side
    for i in range(n):
        cy, cx = step // 2 + (i // side) * step, step // 2 + (i % side) * step
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = PURPLE
    return img


def test_nuclei_density_and_size() -> None:
    few, many = M.nuclei(disks(9, 5)[None]), M.nuclei(disks(36, 5)[None])
    tissue_mm2 = 256 * 256 * 0.25 / 1e6
    assert many.density_per_mm2 == pytest.approx(36 / tissue_mm2, rel=0.1)
    assert few.density_per_mm2 == pytest.approx(9 / tissue_mm2, rel=0.1)
    big = M.nuclei(disks(9, 7)[None])
    assert np.median(big.areas_um2) > 1.5 * np.median(few.areas_um2)
    assert np.median(few.areas_um2) == pytest.approx(np.pi * 25 * 0.25, rel=0.3)


def test_stain_hematoxylin_rises_with_purple() -> None:
    h_few = M.stain_concentrations(disks(4, 5)[None])[:, 0].mean()
    h_many = M.stain_concentrations(disks(36, 9)[None])[:, 0].mean()
    assert h_many > h_few


def test_high_frequency_energy_separates_blur_from_detail() -> None:
    from scipy import ndimage

    sharp = np.stack([disks(64, 3)])
    blurred = ndimage.gaussian_filter(sharp.astype(float), (0, 3, 3, 0)).astype(np.uint8)
    assert M.high_freq_energy(sharp)[0] > 5 * M.high_freq_energy(blurred)[0]


def test_frechet_distance_zero_for_same_set_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 4))
    assert M.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert M.frechet_distance(a, a + 1.0) == pytest.approx(4.0, rel=0.05)
    feats = M.random_conv_features(np.stack([disks(9, 5), disks(36, 5)]), dim=8)
    assert feats.shape == (2, 16) and np.array_equal(feats, M.random_conv_features(np.stack([disks(9, 5), disks(36, 5)]), dim=8))


def test_nearest_similarity_finds_rotated_copies() -> None:
    rng = np.random.default_rng(1)
    bank = rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    query = np.stack([np.rot90(bank[3], 1), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)])
    sim, idx = M.nearest_similarity(query, bank, size=32)
    assert sim[0] == pytest.approx(1.0, abs=1e-4) and idx[0] == 3
    assert sim[1] < 0.5


@pytest.fixture()
def tiny_bundle(tmp_path: Path) -> Path:
    ae_cfg = AutoencoderConfig(base_ch=4, ch_mult=(1, 2), latent_ch=2)
    un_cfg = UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2), attn_lowest=False)
    p = tmp_path / "tiny.safetensors"
    save_bundle(p, BundleConfig(name="tiny", ae=ae_cfg, unet=un_cfg, tile=8), Autoencoder(ae_cfg), UNet(un_cfg))
    return p


def test_evaluate_command_prints_table_and_contact_sheet(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tifffile
    from PIL import Image

    ref = tmp_path / "ref.tif"
    tifffile.imwrite(ref, fake_he(640, 384, seed=2), resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    gen = tmp_path / "gen.png"
    Image.fromarray(fake_he(384, 384, seed=3)).save(gen)
    sheet = tmp_path / "sheet.png"
    rc = main(["evaluate", str(gen), "--reference", str(ref), "--checkpoint", str(tiny_bundle), "--tile", "64",
               "--max-tiles", "8", "--contact-sheet", str(sheet), "--json", str(tmp_path / "e.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| generated |" in out and "| train (real) |" in out and "PSNR" in out
    assert Image.open(sheet).size[0] > 64


def test_the_autoencoder_row_describes_the_slides_own_model(tmp_path: Path, tiny_bundle: Path) -> None:
    """evaluate's default checkpoint is the bundle in the slide's run.json while that file still holds that model."""
    import json

    from gigagen.models.checkpoint import load_bundle
    from gigagen.train.evaluate import slide_model

    slide = tmp_path / "slide"
    slide.mkdir()
    assert slide_model(slide) is None  # no run.json: the embedded default

    def made_with(checkpoint: str, identity: str) -> None:
        (slide / "run.json").write_text(json.dumps({"model": {"checkpoint": checkpoint, "identity": identity}}))

    made_with(str(tiny_bundle), load_bundle(tiny_bundle).identity)
    assert slide_model(slide) == str(tiny_bundle)
    made_with("embedded default", "gigagen-cmu-default@sha256:0")
    assert slide_model(slide) is None
    made_with(str(tiny_bundle), "tiny@sha256:another")  # the file was overwritten by another model since
    assert slide_model(slide) is None
    made_with(str(tmp_path / "moved.safetensors"), load_bundle(tiny_bundle).identity)
    assert slide_model(slide) is None
    (slide / "run.json").write_text("{not json")
    assert slide_model(slide) is None


def test_evaluate_missing_slide_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "nope"), "--reference", str(tmp_path / "r.svs")]) == 2
    assert "not found" in capsys.readouterr().err

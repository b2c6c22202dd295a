"""The sampling engine with a real (tiny, random) network: determinism, untiled equivalence, decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.engine.cascade import local_denoiser, plan_cascade, sample_cascade
from gigagen.engine.noise import INITIAL, gaussian_region
from gigagen.engine.decode import decode_region, stream_decode, to_uint8
from gigagen.engine.grid import Tile
from gigagen.engine.store import DiskStore, MemoryStore
from gigagen.engine.tiler import Tiling, step_plans
from gigagen.models.checkpoint import load_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.sampling.ddim import ddim_sigma, ddim_step
from gigagen.sampling.schedules import ddim_timesteps


def _runner(path: Path, guidance: tuple[float, ...] = (), dtype: torch.dtype = torch.bfloat16) -> BundleRunner:
    return BundleRunner(load_bundle(path, "cpu"), torch.device("cpu"), dtype, guidance)


def _sample(runner: BundleRunner, width: int, height: int, tiling: Tiling, steps: int = 4, eta: float = 0.0, seed: int = 3,
            make_store=MemoryStore):
    cfg = runner.bundle.config
    plans = plan_cascade(width, height, cfg.level_cells, cfg.magnifications, cfg.unet.divisor)
    sp = step_plans(runner.alphas_cumprod, ddim_timesteps(cfg.n_train_steps, steps))
    store = sample_cascade(plans, channels=cfg.ae.latent_ch, n_steps=(steps,) * len(plans), seed=seed, tiling=tiling,
                           denoise=local_denoiser(runner.model_fn, [sp] * len(plans), eta), make_store=make_store)
    return store.view(steps)[:, :, :]


def test_plan_cascade_shapes() -> None:
    plans = plan_cascade(4096, 1000, (8, 8, 8), (20.0, 5.0, 1.25), 4)
    assert [p.shape for p in plans] == [(128, 512), (32, 128), (8, 32)]
    assert [p.factor for p in plans] == [4, 4, 0]
    odd = plan_cascade(1001, 37, (8, 8, 8), (20.0, 5.0, 1.25), 4)
    assert odd[0].shape == (8, 128) and odd[1].shape == (4, 32) and odd[2].shape == (4, 8)


@pytest.mark.parametrize("eta,dtype", [(0.0, torch.bfloat16), (0.7, torch.bfloat16), (0.0, torch.float32)])
def test_same_seed_same_latents_for_any_batch_size_and_order(tiny_bundle: Path, eta: float, dtype: torch.dtype) -> None:
    runner = _runner(tiny_bundle, guidance=(1.5, 2.0), dtype=dtype)
    ref = _sample(runner, 200, 168, Tiling(tile=8, batch_size=16), eta=eta)
    assert np.isfinite(ref).all() and ref.std() > 0.05
    for batch, order in [(1, "raster"), (3, "reverse"), (7, "shuffle"), (64, "shuffle")]:
        got = _sample(runner, 200, 168, Tiling(tile=8, batch_size=batch, order=order), eta=eta)
        np.testing.assert_array_equal(got, ref, err_msg=f"batch {batch} order {order}")
    other_seed = _sample(runner, 200, 168, Tiling(tile=8), eta=eta, seed=4)
    assert not np.allclose(other_seed, ref)


def test_a_slide_that_fits_in_one_tile_equals_the_untiled_sampler(tiny_bundle: Path) -> None:
    runner = _runner(tiny_bundle)
    cfg = runner.bundle.config
    plans = plan_cascade(24, 24, cfg.level_cells, cfg.magnifications, cfg.unet.divisor)
    assert all(max(p.shape) <= 8 for p in plans)
    sp = step_plans(runner.alphas_cumprod, ddim_timesteps(cfg.n_train_steps, 5))
    tiled = sample_cascade(plans, channels=4, n_steps=(5, 5, 5), seed=11, tiling=Tiling(tile=8, mode="gridshift"),
                           denoise=local_denoiser(runner.model_fn, [sp] * 3, 0.0)).view(5)[:, :, :]

    # reference: plain DDIM on whole canvases, layout first, conditioning = whole parent upsampled
    parent = None
    for plan in reversed(plans):
        x = gaussian_region(11, plan.level, INITIAL, 0, plan.shape[0], 0, plan.shape[1], 4)[None]
        cond = None
        if parent is not None:
            up = torch.nn.functional.interpolate(torch.from_numpy(parent)[None], scale_factor=plan.factor, mode="bilinear", align_corners=False)
            cond = up[:, :, : plan.shape[0], : plan.shape[1]].numpy()
        for s in sp:
            x0, eps = runner.model_fn(x, s.t, plan.level, cond)
            x = ddim_step(x0, eps, s.alpha_bar_next, ddim_sigma(s.alpha_bar, s.alpha_bar_next, 0.0), None)
        parent = x[0]
    np.testing.assert_allclose(tiled, parent, atol=1e-5)


def test_blend_modes_cost(tiny_bundle: Path) -> None:
    """Grid-shift and fixed grid cost one evaluation per latent pixel per step; overlap costs more."""
    per_pixel = {}
    for mode in ("gridshift", "none", "overlap"):
        runner = _runner(tiny_bundle)
        lat = _sample(runner, 256, 256, Tiling(tile=8, mode=mode), steps=3)
        assert np.isfinite(lat).all()
        area = sum(p.shape[0] * p.shape[1] for p in plan_cascade(256, 256, (4, 4, 4), (20.0, 5.0, 1.25), 4))
        per_pixel[mode] = runner.counters.unet_pixels / (3 * area)
    assert per_pixel["gridshift"] == per_pixel["none"] == 1.0
    assert per_pixel["overlap"] > 2.5


def test_guidance_doubles_passes_only_at_the_levels_it_guides(tiny_bundle: Path) -> None:
    pixels, latents = {}, {}
    for g in ((1.0, 1.0), (2.0, 2.0), (1.0, 2.0), (2.0, 1.0)):
        runner = _runner(tiny_bundle, guidance=g)
        latents[g] = _sample(runner, 64, 64, Tiling(tile=8), steps=2)
        pixels[g] = runner.counters.unet_pixels
    plans = plan_cascade(64, 64, (4, 4, 4), (20.0, 5.0, 1.25), 2)
    per_level = [2 * p.shape[0] * p.shape[1] for p in plans]  # 2 steps; the layout level is never conditioned
    assert pixels[(2.0, 2.0)] == pixels[(1.0, 1.0)] + per_level[0] + per_level[1]
    assert pixels[(1.0, 2.0)] == pixels[(1.0, 1.0)] + per_level[1]  # the 5x level only
    assert pixels[(2.0, 1.0)] == pixels[(1.0, 1.0)] + per_level[0]
    assert not np.allclose(latents[(1.0, 2.0)], latents[(1.0, 1.0)])  # guiding 5x changes what 20x is refined from
    assert not np.allclose(latents[(2.0, 1.0)], latents[(1.0, 1.0)])


def test_tiled_decode_equals_untiled(tiny_bundle: Path) -> None:
    runner = _runner(tiny_bundle, dtype=torch.float32)
    latent = np.random.default_rng(0).standard_normal((4, 40, 52)).astype(np.float32)
    whole = to_uint8(runner.decode_fn(latent[None])[0])  # (3, 160, 208)
    out = np.zeros((3, 150, 201), dtype=np.uint8)
    for tile, rgb in stream_decode(latent, runner.decode_fn, 4, 150, 201, chunk=64, halo=6):
        out[:, tile.y0 : tile.y1, tile.x0 : tile.x1] = rgb
    diff = np.abs(out.astype(int) - whole[:, :150, :201].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    region = decode_region(latent, runner.decode_fn, 4, Tile(64, 128, 128, 192), halo=6)
    assert np.abs(region.astype(int) - whole[:, 64:128, 128:192].astype(int)).max() <= 1


class _Interrupt(Exception):
    pass


def _failing_after(model_fn, n: int):
    calls = [0]

    def fn(*args):
        calls[0] += 1
        if calls[0] > n:
            raise _Interrupt
        return model_fn(*args)

    return fn


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_stores_match_and_resume_after_interruption(tiny_bundle: Path, tmp_path: Path, kind: str) -> None:
    runner = _runner(tiny_bundle)
    ref = _sample(runner, 200, 168, Tiling(tile=8))
    cfg = runner.bundle.config
    plans = plan_cascade(200, 168, cfg.level_cells, cfg.magnifications, cfg.unet.divisor)
    sp = step_plans(runner.alphas_cumprod, ddim_timesteps(cfg.n_train_steps, 4))
    root = str(tmp_path / "state")
    make = (lambda spec: DiskStore(spec, root)) if kind == "disk" else (lambda spec: MemoryStore(spec, root))
    tiling = Tiling(tile=8, batch_size=5)
    for n_calls in (3, 9, 30):  # interrupted in the layout, then mid-refinement, then at the finest level
        with pytest.raises(_Interrupt):
            sample_cascade(plans, channels=4, n_steps=(4, 4, 4), seed=3, tiling=tiling,
                           denoise=local_denoiser(_failing_after(runner.model_fn, n_calls), [sp] * 3, 0.0), make_store=make)
    store = sample_cascade(plans, channels=4, n_steps=(4, 4, 4), seed=3, tiling=tiling,
                           denoise=local_denoiser(runner.model_fn, [sp] * 3, 0.0), make_store=make)
    np.testing.assert_array_equal(store.view(4)[:, :, :], ref)
    if kind == "disk":  # only the final state of each level is left on disk
        assert sorted(p.name for p in (tmp_path / "state" / "L0").iterdir()) == ["s0004", "state.json"]


def test_disk_store_refuses_overlap(tmp_path: Path) -> None:
    from gigagen.engine.store import LevelSpec

    with pytest.raises(ValueError, match="overlap"):
        DiskStore(LevelSpec(0, (16, 16), 4, 0, Tiling(tile=8, mode="overlap")), str(tmp_path))


def test_the_embedded_model_gives_a_tile_the_same_bits_alone_or_in_a_batch() -> None:
    """The real network, not only the tiny one: PyTorch's channels-last GroupNorm and its fused attention
    kernel both computed a batch of one differently (up to 0.04 apart in x0), so a tile's result depended on
    --batch-size; layers.GroupNorm and SelfAttention keep every sample's bits whatever its batch."""
    runner = BundleRunner(load_bundle(None, "cpu"), torch.device("cpu"), torch.bfloat16)
    rng = np.random.default_rng(0)
    for shape in ((64, 64), (24, 64)):
        x, cond = (rng.standard_normal((3, 12, *shape)).astype(np.float32) for _ in range(2))
        for level in (0, 1):
            alone = runner.model_fn(x[:1], 500, level, cond[:1])[0]
            for b in (2, 3):
                np.testing.assert_array_equal(runner.model_fn(x[:b], 500, level, cond[:b])[0][:1], alone)

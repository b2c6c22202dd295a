"""`gigagen slide --plan`'s time estimate: a cost model of the calls a run makes (every step's own tiles, partial edge
tiles and batching), calibrated on the engine's own step at each level, so the prediction follows the real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gigagen.plan as plan_mod
from gigagen.cli import main
from gigagen.config import RunConfig
from gigagen.engine.cascade import local_denoiser, sample_cascade
from gigagen.models.denoiser import BundleRunner
from gigagen.pipeline import _setup_model, run_schedules, run_tiling, sampled_plans


def _counting_runner(cfg: RunConfig, bundle, clock: list[float]) -> BundleRunner:
    """The run's real runner whose model calls each advance `clock` by one second."""
    runner = BundleRunner(bundle, torch.device("cpu"), torch.bfloat16, cfg.guidance, cfg.autoguidance, cfg.cond_aug)
    real = runner.model_fn

    def counted(x, t, level, cond):
        clock[0] += 1.0
        return real(x, t, level, cond)

    runner.model_fn = counted  # type: ignore[method-assign]
    return runner


@pytest.mark.parametrize("steps,blend", [((3, 2, 2), "none"), ((2, 4, 1), "none"), ((3, 2, 2), "gridshift"), ((2, 5, 3), "gridshift")])
def test_predicted_sampling_time_is_the_calls_a_run_makes(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, steps: tuple[int, ...],
                                                          blend: str) -> None:
    """With a clock that only moves by one second per model call, the estimate is exactly the number of calls the
    cascade makes, every step's own grid-shifted tiles included. Partial edge tiles and a last batch of fewer
    tiles cost a whole call each, which the old per-pixel timing of full batches missed."""
    cfg0 = RunConfig(width=288, height=288, out="unused", seed=5, steps=steps, blend=blend, checkpoint=str(tiny_bundle), batch_size=4)
    cfg, _, _, bundle, plans = _setup_model(cfg0)
    mc = bundle.config
    clock = [0.0]
    monkeypatch.setattr(plan_mod.time, "perf_counter", lambda: clock[0])
    runner = _counting_runner(cfg, bundle, clock)
    sampled = [p.level for p in sampled_plans(plans, mc)]
    tiling, schedules = run_tiling(cfg, mc), run_schedules(cfg, runner)
    calib = plan_mod.calibrate(runner, cfg, tiling, schedules, sampled, 16)
    predicted = plan_mod.predict_seconds(cfg, plans, calib, tiling, mc.ae.latent_ch, mc.ae.factor)["sampling"]

    before = clock[0]
    sample_cascade(plans, channels=mc.ae.latent_ch, n_steps=steps, seed=cfg.seed, tiling=tiling,
                   denoise=local_denoiser(runner.model_fn, schedules, 0.0))
    calls = clock[0] - before
    assert calls > sum(steps)  # more than one call per step somewhere, or the test proves nothing
    assert predicted == pytest.approx(calls)
    # the old calibration's figure: latent pixels over full batches of whole tiles
    pixels = plan_mod.evaluations(cfg, plans, cfg.tile, mc.unet.divisor)["unet_latent_pixels"]
    assert pixels / (cfg.batch_size * cfg.tile**2) < 0.9 * calls


def test_plan_reports_the_per_level_calibration(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slide", "--checkpoint", str(tiny_bundle), "--size", "256", "--steps", "2", "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    calib = plan["calibration"]
    assert sorted(calib["step_factor"]) == [str(lv) for lv in range(len(plan["levels"]))]
    assert all(v > 0 for v in calib["step_factor"].values()) and calib["call_s"] + calib["latent_px_s"] > 0
    sec = plan["seconds_on_this_machine"]
    assert sec["sampling"] > 0 and sec["total"] == pytest.approx(sec["sampling"] + sec["decode"] + sec["pyramid_and_export"], abs=0.2)

"""Farm the tile work of every denoising step, and the decode, out to a dask.distributed cluster.

The client walks the cascade step by step: it submits the step's tile batches, keeps a bounded
window of futures in flight, and commits the step once every batch is back. Workers read their
inputs from the shared latent store and write their own outputs there (one file per tile, written
atomically), returning only a count, so a retried task after a lost worker rewrites identical bytes.
Results equal a single-process run: the same tiles, the same noise, the same per-sample network bits.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Sequence

from gigagen.engine.grid import Tile
from gigagen.engine.store import DiskStore, LevelSpec, StateView
from gigagen.engine.tiler import StepPlan, run_batch, step_batches
from gigagen.errors import UserError
from gigagen.models.denoiser import Counters

RETRIES = 3


@dataclass(frozen=True)
class RunnerSpec:
    """How a worker rebuilds the model (checkpoint path must be readable on every worker)."""

    checkpoint: str | None
    precision: str
    guidance: tuple[float, ...]
    autoguidance: float
    cond_aug: int | None = None


def _worker_runner(spec: RunnerSpec) -> Any:
    """The worker's model, loaded once per worker process and kept on the dask Worker object."""
    import torch
    from distributed import get_worker

    from gigagen.models.checkpoint import load_bundle
    from gigagen.models.denoiser import BundleRunner, pick_device, pick_dtype

    worker = get_worker()
    cache = worker.__dict__.setdefault("_gigagen_runners", {})
    if spec not in cache:
        torch.set_num_threads(max(1, worker.state.nthreads))
        device = pick_device("auto")
        cache[spec] = BundleRunner(load_bundle(spec.checkpoint, device), device, pick_dtype(spec.precision, device), spec.guidance,
                                    spec.autoguidance, spec.cond_aug)
    return cache[spec]


COUNTS = tuple(f.name for f in fields(Counters))


def _stats(runner: Any, before: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a - b for a, b in zip(_snapshot(runner), before))


def _snapshot(runner: Any) -> tuple[int, ...]:
    return tuple(getattr(runner.counters, name) for name in COUNTS)


def denoise_task(rspec: RunnerSpec, root: str, spec: LevelSpec, batch: list[Tile], parent: tuple[LevelSpec, int] | None,
                 factor: int, step: StepPlan, eta: float) -> tuple[int, ...]:
    """One batch of one step on a worker; returns evaluation counts only."""
    runner = _worker_runner(rspec)
    before = _snapshot(runner)
    view = DiskStore(parent[0], root).view(parent[1]) if parent else None
    run_batch(DiskStore(spec, root), spec, batch, parent=view, factor=factor, model_fn=runner.model_fn, step=step, eta=eta)
    return _stats(runner, before)


def decode_task(rspec: RunnerSpec, root: str, spec: LevelSpec, state: int, tiles: list[Tile], factor: int, zarr_path: str) -> tuple[int, ...]:
    """Decode pixel tiles from the final latent state and write them, chunk-aligned, into the slide store."""
    from gigagen.engine.decode import decode_region
    from gigagen.io.omezarr import open_writer

    runner = _worker_runner(rspec)
    before = _snapshot(runner)
    latent = DiskStore(spec, root).view(state)
    writer = open_writer(zarr_path)
    for tile in tiles:
        writer.write_tile(tile.y0, tile.x0, decode_region(latent, runner.decode_fn, factor, tile, runner.bundle.config.ae.decode_halo))
    return _stats(runner, before)


class Farm:
    def __init__(self, client: Any, rspec: RunnerSpec, root: str) -> None:
        self.client, self.rspec, self.root = client, rspec, root
        self.counters = Counters()
        workers = client.scheduler_info().get("workers", {})
        if not workers:
            raise UserError("the dask cluster has no workers")
        gpu = any(w.get("resources", {}).get("GPU") for w in workers.values())
        self.resources = {"GPU": 1} if gpu else None  # GPU workers, when there are any, get the network work
        self.window = 2 * sum(w.get("nthreads", 1) for w in workers.values())

    @classmethod
    @contextmanager
    def connect(cls, scheduler: str | None, n_workers: int, job: Any) -> Iterator["Farm"]:
        from distributed import Client, LocalCluster

        ckpt = str(Path(job.cfg.checkpoint).resolve()) if job.cfg.checkpoint else None
        rspec = RunnerSpec(ckpt, job.cfg.precision, job.cfg.guidance, job.cfg.autoguidance, job.cfg.cond_aug)
        if scheduler:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise UserError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
            with client:
                yield cls(client, rspec, job.state.root)
        else:
            with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
                yield cls(client, rspec, job.state.root)

    def _run_all(self, calls: list[tuple[Callable[..., Any], tuple]], on_done: Callable[[int], None], sizes: list[int]) -> None:
        """Submit calls with at most `window` in flight; add each result's counts to the counters."""
        from distributed import as_completed

        pending = list(zip(calls, sizes))[::-1]
        size_of: dict[Any, int] = {}

        def submit() -> Any:
            (fn, args), n = pending.pop()
            fut = self.client.submit(fn, *args, retries=RETRIES, resources=self.resources, pure=False)
            size_of[fut] = n
            return fut

        running = as_completed([submit() for _ in range(min(self.window, len(pending)))])
        for fut in running:
            for name, n in zip(COUNTS, fut.result()):
                setattr(self.counters, name, getattr(self.counters, name) + n)
            on_done(size_of.pop(fut))
            if pending:
                running.add(submit())

    def denoiser(self, steps: Sequence[list[StepPlan]], eta: float,
                 on_tiles: Callable[[int], None]) -> Callable[[Any, StateView | None, int], None]:
        """As cascade.local_denoiser (`steps[level]`: that level's schedule), each step's tile batches farmed out."""
        def denoise(store: Any, parent: StateView | None, factor: int) -> None:
            spec: LevelSpec = store.spec
            pref = (parent.store.spec, parent.state) if parent is not None else None
            for step in steps[spec.level][store.completed() :]:
                batches = step_batches(spec, step.index)
                calls = [(denoise_task, (self.rspec, self.root, spec, b, pref, factor, step, eta)) for b in batches]
                self._run_all(calls, on_tiles, [len(b) for b in batches])
                store.commit(step.index + 1)

        return denoise

    def decode(self, latent: StateView, tiles: list[Tile], factor: int, zarr_path: str, on_tiles: Callable[[int], None]) -> None:
        groups = [tiles[i : i + 4] for i in range(0, len(tiles), 4)]
        calls = [(decode_task, (self.rspec, self.root, latent.store.spec, latent.state, g, factor, zarr_path)) for g in groups]
        self._run_all(calls, on_tiles, [len(g) for g in groups])

"""How close `gigagen slide --plan`'s time estimate comes to the run it plans, stage by stage.

    .venv/bin/python scripts/bench_plan.py [--sizes 2048,4096] [--seed 7] [--checkpoint PATH] [-- extra slide flags]

For each size: `gigagen slide --plan --json`, then the same run for real (a fresh process under `/usr/bin/time -v`,
into a temporary directory); prints predicted and measured seconds (run.json timings_s) and their ratio, and the
run's wall time and peak resident memory. Run it on an idle machine:
anything else on the cores slows the run, and the calibration inside --plan, alike but not equally.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def measured(timings: dict[str, float]) -> dict[str, float]:
    """run.json's stage timings grouped as --plan predicts them."""
    sampling = sum(v for k, v in timings.items() if k.startswith("level"))
    io = timings.get("pyramid", 0.0) + timings.get("export", 0.0)
    return {"sampling": sampling, "decode": timings.get("decode", 0.0), "pyramid_and_export": io, "total": timings["total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,4096")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("extra", nargs="*", help="more gigagen slide flags, after --")
    args = ap.parse_args()
    gigagen = [str(Path(sys.executable).with_name("gigagen")), "slide", "--seed", str(args.seed), "--quiet", *args.extra]
    if args.checkpoint:
        gigagen += ["--checkpoint", args.checkpoint]
    print(f"{'slide':<11} {'stage':<19} {'--plan s':>9} {'run s':>8} {'plan/run':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            out = Path(tmp) / f"s{size}"
            common = [*gigagen, "--size", str(size), "--out", str(out)]
            plan = json.loads(subprocess.run([*common, "--plan", "--json"], capture_output=True, text=True, check=True).stdout)
            timed = subprocess.run(["/usr/bin/time", "-v", *common], capture_output=True, text=True, check=True).stderr
            run = measured(json.loads((out / "run.json").read_text())["timings_s"])
            for stage, predicted in plan["seconds_on_this_machine"].items():
                print(f"{size}x{size:<6} {stage:<19} {predicted:>9.1f} {run[stage]:>8.1f} {predicted / max(run[stage], 1e-9):>9.2f}")
            print(f"{size}x{size:<6} " + ", ".join(line.strip() for line in timed.splitlines()
                                                  if line.strip().startswith(("Elapsed (wall", "Maximum resident"))))
            shutil.rmtree(out)


if __name__ == "__main__":
    main()

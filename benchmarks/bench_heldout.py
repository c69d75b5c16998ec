"""Held-out combinations, end to end through the CLI: (simulate →) train → evaluate → the results table.

One command per table of docs/benchmarks.md:

    python benchmarks/bench_heldout.py --screen demo                                  # the 16 fixed doubles
    python benchmarks/bench_heldout.py --screen nonlinear --genes 300 --seed 1 --fold 0
    python benchmarks/bench_heldout.py --screen nonlinear --rate-calibration off     # its run, uncalibrated

``demo`` uses assets/demo_screen.h5ad and its fixed held-out doubles; ``nonlinear`` simulates a count
screen (``lcd simulate --kind nonlinear``) and holds out fold ``--fold`` of the paper's split protocol.
Training uses ``--preset`` (default demo) plus any ``--set key=value``. Each step is a real ``lcd``
subprocess, timed; the report folder is ``--out``/report (summary.md, per_condition.csv, plots), and
benchmarks/results/heldout_<name>.json gets the summary table, the win rates and the timings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def lcd(*args) -> float:
    """Run ``lcd ARGS`` (this interpreter's lcd_core); return its wall time; stop on failure."""
    t0 = time.time()
    cmd = [sys.executable, "-m", "lcd_core.cli", *map(str, args)]
    print("$ lcd " + " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return round(time.time() - t0, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--screen", choices=["demo", "nonlinear"], default="demo")
    p.add_argument("--genes", type=int, default=300, help="nonlinear: number of genes")
    p.add_argument("--seed", type=int, default=1, help="nonlinear: simulation seed")
    p.add_argument("--fold", type=int, default=0, help="nonlinear: held-out fold")
    p.add_argument("--preset", default="demo")
    p.add_argument("--set", action="append", default=[], help="training override key=value")
    p.add_argument("--out", help="working folder (default runs/heldout_<name>)")
    p.add_argument("--rate-calibration", choices=["on", "off"],
                   help="measure a copy of the trained run with its rate calibration switched so (lcd fit)")
    args = p.parse_args()
    name = "demo" if args.screen == "demo" else f"nonlinear{args.genes}_seed{args.seed}_fold{args.fold}"
    name += "".join(f"_{s.replace('=', '')}" for s in args.set)
    out = Path(args.out or ROOT / "runs" / f"heldout_{name}")
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    if args.screen == "demo":
        screen, split = ROOT / "assets" / "demo_screen.h5ad", []
    else:
        screen, split = out / "screen.h5ad", ["--fold", args.fold]
        if not screen.exists():
            times["simulate_s"] = lcd("simulate", "--kind", "nonlinear", "--genes", args.genes, "--seed", args.seed,
                                      "--out", screen)
    run = out / "run"
    if not (run / "COMPLETE").exists():
        overrides = [a for s in args.set for a in ("--set", s)]
        times["train_s"] = lcd("train", screen, "--out", run, "--preset", args.preset, *split, *overrides, "--quiet")
    if args.rate_calibration is not None:  # a copy with the calibration switched so; the trained run stays as is
        name += f"_rc{args.rate_calibration}"
        copy = out / f"run_rc{args.rate_calibration}"
        if not copy.exists():
            shutil.copytree(run, copy)
        times["fit_s"] = lcd("fit", copy, "--data", screen, "--rate-calibration", args.rate_calibration, "--quiet")
        run = copy
    report = out / f"report{run.name[3:]}"
    times["evaluate_s"] = lcd("evaluate", run, "--data", screen, "--out", report)
    print((report / "summary.md").read_text())
    per = pd.read_csv(report / "per_condition.csv", comment="#")
    summary = pd.read_csv(report / "summary.csv", comment="#")
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"heldout_{name}.json"
    dest.write_text(json.dumps({
        "args": vars(args), "screen": str(screen), "times": times,
        "n_heldout": int(per["condition"].nunique()),
        "summary": summary.to_dict(orient="records"),
        "per_condition_mmd_top20": per.pivot(index="condition", columns="method", values="mmd_top20").round(5)
                                      .to_dict(orient="index"),
    }, indent=2, default=str))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()

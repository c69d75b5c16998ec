"""Real screens end to end through the CLI: train (timed, peak memory) → reproduction table → held-out table.

One command per table of docs/benchmarks.md ("Real screens"):

    python benchmarks/bench_real.py --screen papalexi                       # 25 knockouts, raw counts
    python benchmarks/bench_real.py --screen norman                         # 5 held-out doubles, counts recovered
    python benchmarks/bench_real.py --screen norman --no-count-recovery     # the same, normalised-values mode
    python benchmarks/bench_real.py --screen norman --guidance 1.0          # the trained run, sampled at W = 1
    python benchmarks/bench_real.py --screen norman --rate-calibration off  # the trained run, uncalibrated

The screens are the public subsets in ../shared/data (their README); the script stops with a message when
that folder is absent. Training uses the default preset unless ``--preset`` / ``--set`` say otherwise.

Reproduction table: for every training condition, LCD's own top-20 mean shift against the measured one
(Pearson r, magnitude ratio) beside the split-half replicate ceiling (:func:`lcd_core.model.fit_report`), and
the same for the anchored prediction where the run has anchors (by construction close to 1: its singles' means
are fitted to these cells). Held-out table (screens with held-out doubles): ``lcd evaluate``'s summary, raw and
replicate-calibrated, LCD and anchored LCD against every baseline, and per-double mmd_top20.
Writes benchmarks/results/real_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
SCREENS = {
    "papalexi": ("papalexi2021_thp1_subset.h5ad", []),
    # the five doubles whose two singles are both measured (../shared/data/README.md)
    "norman": ("norman2019_k562_subset.h5ad",
               ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]),
}


def lcd(*args) -> dict:
    """Run ``lcd ARGS`` (this interpreter's lcd_core); return wall time and the children's peak RSS."""
    t0 = time.time()
    print("$ lcd " + " ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, "-m", "lcd_core.cli", *map(str, args)], check=True, cwd=ROOT)
    # ru_maxrss of the children is the largest child so far: run training first, it is the largest
    return {"wall_s": round(time.time() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def reproduction(run: Path, data: Path, read_kwargs: dict) -> pd.DataFrame:
    from lcd_core.data import read_screen
    from lcd_core.model import LCD
    from lcd_core.model._fit import fit_report

    model = LCD.load(run, device="cpu")
    screen = read_screen(data, **read_kwargs)
    singles = [c for c in model.conditions if c != "ctrl" and "+" not in c]
    rows = {}
    for anchored in [False] + ([True] if model.anchors is not None else []):
        rep = fit_report(model, screen, conditions=singles, anchored=anchored, n_cells=500)
        tag = "anchored" if anchored else "lcd"
        for cond, e in rep["conditions"].items():
            row = rows.setdefault(cond, {"n_cells": int(screen.n_cells[cond]), "ceiling_r": e["r_ceiling"],
                                         "ceiling_magnitude_range": e["magnitude_range"]})
            row[f"{tag}_r"], row[f"{tag}_magnitude"], row[f"{tag}_status"] = e["r"], e["magnitude"], e["status"]
    return pd.DataFrame.from_dict(rows, orient="index").sort_values("ceiling_r", ascending=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--screen", choices=list(SCREENS), required=True)
    p.add_argument("--no-count-recovery", action="store_true")
    p.add_argument("--preset", default=None, help="training preset (default: lcd train's default)")
    p.add_argument("--set", action="append", default=[], help="training override key=value")
    p.add_argument("--out", help="working folder (default runs/real_<name>)")
    p.add_argument("--rate-calibration", choices=["on", "off"],
                   help="measure a copy of the trained run with its rate calibration switched so (lcd fit)")
    p.add_argument("--guidance", type=float, help="measure a copy of the trained run refitted (lcd fit) at this "
                   "guidance weight instead of the run's own (results named …_g<W>)")
    args = p.parse_args()
    file, heldout = SCREENS[args.screen]
    data = DATA / file
    if not data.exists():
        sys.exit(f"bench_real: {data} is absent; the real screens live in ../shared/data beside the checkout")
    name = args.screen + ("_nocount" if args.no_count_recovery else "")
    name += "".join(f"_{s.replace('=', '')}" for s in args.set)
    out = Path(args.out or ROOT / "runs" / f"real_{name}")
    out.mkdir(parents=True, exist_ok=True)
    read = ["--no-count-recovery"] if args.no_count_recovery else []
    run, result = out / "run", {"args": vars(args), "screen": str(data), "heldout": heldout}
    if not (run / "COMPLETE").exists():
        train = ["train", data, "--out", run, *read, "--quiet"]
        train += ["--preset", args.preset] if args.preset else []
        train += ["--holdout-combos", ",".join(heldout)] if heldout else []
        train += [a for s in args.set for a in ("--set", s)]
        result["train"] = lcd(*train)
    if args.guidance is not None or args.rate_calibration is not None:
        # a copy, so the trained run keeps its own settings; fit redoes what depends on them (anchors, fit check...)
        tag = (f"_g{args.guidance:g}" if args.guidance is not None else "") + \
              (f"_rc{args.rate_calibration}" if args.rate_calibration is not None else "")
        refit = out / f"run{tag}"
        if not refit.exists():
            shutil.copytree(run, refit)
        settings = (["--guidance", args.guidance] if args.guidance is not None else []) + \
                   (["--rate-calibration", args.rate_calibration] if args.rate_calibration is not None else [])
        result["fit"] = lcd("fit", refit, "--data", data, *read, *settings, "--quiet")
        run, name = refit, name + tag
    config = json.loads((run / "config.json").read_text())
    result["preset"] = config["config"]["preset"]
    result["mode"] = config["mode"]

    rep = reproduction(run, data, {"count_recovery": not args.no_count_recovery})
    pd.set_option("display.width", 200)
    print(f"\nReproduction of the training singles ({args.screen}, {config['mode']} mode):")
    print(rep.round(3).to_string())
    judged = rep[rep["ceiling_r"] >= 0.5]
    summ = {"n_singles": len(rep), "n_with_reproducible_shift": len(judged)}
    for tag in ("lcd", "anchored"):
        if f"{tag}_r" in rep:
            summ[tag] = {
                "median_r": float(judged[f"{tag}_r"].median()),
                "median_r_over_ceiling": float((judged[f"{tag}_r"] / judged["ceiling_r"]).median()),
                "median_magnitude": float(judged[f"{tag}_magnitude"].median()),
                "n_within_replicate_noise": int((rep[f"{tag}_status"] == "within").sum()),
            }
    print(json.dumps(summ, indent=1))
    result["reproduction"] = {"summary": summ, "per_condition": rep.round(4).to_dict(orient="index")}

    if heldout:
        report = out / f"report{run.name[3:]}"  # report, report_g1.15, report_rcon, ...
        result["evaluate"] = lcd("evaluate", run, "--data", data, "--out", report, *read)
        per = pd.read_csv(report / "per_condition.csv")
        wide = per.pivot(index="condition", columns="method", values="mmd_top20")
        print("\nHeld-out doubles, mmd_top20 (lower is better):")
        print(wide.round(4).to_string())
        wins = {m: {b: int((wide[m] < wide[b]).sum()) for b in wide.columns if b != m}
                for m in ("lcd", "lcd_anchored") if m in wide}
        pdelta = per.pivot(index="condition", columns="method", values="pearson_delta_top20").mean()
        print("wins on mmd_top20:", json.dumps(wins))
        print("mean pearson_delta_top20:", pdelta.round(3).to_dict())
        print((report / "summary.md").read_text())
        result["heldout_table"] = {
            "mmd_top20": wide.round(5).to_dict(orient="index"), "wins_mmd_top20": wins,
            "mean_pearson_delta_top20": pdelta.round(4).to_dict(),
            "summary": pd.read_csv(report / "summary.csv").to_dict(orient="records"),
        }
        calibrated = report / "summary_calibrated.csv"
        if calibrated.exists():
            result["heldout_table"]["calibrated"] = pd.read_csv(calibrated).to_dict(orient="records")
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"real_{name}.json"
    dest.write_text(json.dumps(result, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()

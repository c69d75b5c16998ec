"""Benchmark edge confidence (issue 16): calibration of directed CLIPR's bootstrap on the paper's linear protocol,
identifiability labels, and the cost of ``clipr_confidence`` on the shipped demo run.

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_confidence.py [--parts linear,demo] [--d 100]
[--n-boot 100] [--seeds 0] [--out benchmarks/results/confidence.json]``. Prints a table and writes JSON.

Parts
-----
linear  METHOD §8 linear generator (ER and scale-free, expected degree 10), K = d and K = d/2 perturbed genes,
        200 cells per condition drawn exactly from N(−A⁻¹(b + c_q), Σ); directed CLIPR on the measured
        moments (what ``source="data"`` reads), bootstrap of cells within each condition. Reports the share of
        identified edges whose nominal 90 % interval covers the true effect (all edges too), the sign accuracy
        of edges with sign stability ≥ 0.9 (true non-zero edges), and whether every edge between two
        unperturbed genes is labelled not identified.
demo    ``clipr_confidence`` on a copy of assets/demo_run (cells source, 100 resamples, 20 shuffles) against one
        uncached directed read-out, and its coverage of the demo's true causal matrix (the bootstrap covers the
        cells' sampling noise only, not the model's error: expect under-coverage there); then again with the
        run's ensemble (``lcd ensemble``), whose networks' spread joins the bootstrap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lcd_core.clipr import bootstrap_directed, clipr_directed_from_data, identifiability  # noqa: E402
from lcd_core.simulation._linear import linear_sde  # noqa: E402
from lcd_core.tl._recovery import sign_auroc  # noqa: E402


def part_linear(d: int, n_boot: int, seeds: list[int], n_cells: int = 200,
                fractions: tuple[float, ...] = (1.0, 0.5)) -> list[dict]:
    rows = []
    for seed in seeds:
        for graph in ("er", "sf"):
            for K in [int(round(f * d)) for f in fractions]:
                rng = np.random.default_rng(seed)
                sde = linear_sde(d, graph=graph, rng=rng)
                targets = np.sort(rng.permutation(d)[:K])
                C = np.zeros((d, K + 1))
                C[targets, np.arange(1, K + 1)] = sde.shifts[targets]
                means = -np.linalg.solve(sde.sde_matrix, sde.bias[:, None] + C)
                chol = np.linalg.cholesky(sde.cov)
                cells = [means[:, k] + rng.normal(size=(n_cells, d)) @ chol.T for k in range(K + 1)]
                tidx = [None, *targets.tolist()]
                t0 = time.perf_counter()
                point = clipr_directed_from_data(cells, tidx)
                t_point = time.perf_counter() - t0
                ident = identifiability(point)
                t0 = time.perf_counter()
                boot = bootstrap_directed(cells, tidx, n_boot=n_boot, level=0.9, rng=seed, effects=point.effects)
                t_boot = time.perf_counter() - t0
                truth = sde.causal_matrix  # rows = sources
                off = ~np.eye(d, dtype=bool)
                covered = (truth >= boot["lower"]) & (truth <= boot["upper"])
                idm = (ident.labels == "identified") & off
                stable = (boot["sign_stability"] >= 0.9) & off
                nz = truth != 0
                right = np.sign(point.effects) == np.sign(truth)
                unpert = np.ones(d, dtype=bool)
                unpert[targets] = False
                uu = np.outer(unpert, unpert) & off
                rows.append({
                    "seed": seed, "graph": graph, "d": d, "K": K, "n_boot": n_boot,
                    "sign_auroc": float(sign_auroc(point.effects, truth)),
                    "labels": ident.counts(), "rank": ident.rank, "condition_number": ident.condition_number,
                    "coverage_identified": float(covered[idm].mean()) if idm.any() else None,
                    "coverage_partly": float(covered[(ident.labels == "partly identified") & off].mean())
                    if ((ident.labels == "partly identified") & off).any() else None,
                    "coverage_all": float(covered[off].mean()),
                    "n_stable": int(stable.sum()),
                    "stable_sign_accuracy_true_edges": float(right[stable & nz].mean()) if (stable & nz).any() else None,
                    "stable_share_true_zero": float((~nz)[stable].mean()) if stable.any() else None,
                    "unperturbed_pairs_not_identified": bool((ident.labels[uu] == "not identified").all())
                    if uu.any() else None,
                    "seconds_point": t_point, "seconds_bootstrap": t_boot,
                })
                r = rows[-1]
                print(f"{graph} d={d} K={K:>3} seed={seed}: AUROC {r['sign_auroc']:.3f}, labels {r['labels']}, "
                      f"coverage identified {r['coverage_identified']}, all {r['coverage_all']:.3f}; "
                      f"stable {r['n_stable']} sign acc {r['stable_sign_accuracy_true_edges']}; uu not-id "
                      f"{r['unperturbed_pairs_not_identified']}; point {t_point:.2f}s boot {t_boot:.1f}s", flush=True)
    return rows


def part_demo(n_boot: int = 100, n_null: int = 20) -> dict:
    import torch

    from lcd_core.clipr import clipr_confidence, get_clipr
    from lcd_core.data import read_screen
    from lcd_core.model import LCD, Ensemble
    from lcd_core.simulation import demo_screen_path

    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(root / "assets" / "demo_run", Path(tmp) / "run")
        for f in (Path(tmp) / "run" / "cache").glob("clipr-*"):
            f.unlink()  # time the read-out from scratch
        model = LCD.load(Path(tmp) / "run", device="cpu")
        t0 = time.perf_counter()
        get_clipr(model, use_cache=False)
        t_readout = time.perf_counter() - t0
        t0 = time.perf_counter()
        conf = clipr_confidence(model, n_boot=n_boot, n_null=n_null)  # the point estimate is not cached: + 1 read-out
        t_conf_cold = time.perf_counter() - t0
        (Path(tmp) / "run" / "cache").joinpath("x").touch()
        for f in (Path(tmp) / "run" / "cache").glob("clipr-confidence-*"):
            f.unlink()
        t0 = time.perf_counter()
        conf = clipr_confidence(model, n_boot=n_boot, n_null=n_null)  # the point estimate cached (as in a run)
        t_conf = time.perf_counter() - t0
        t0 = time.perf_counter()
        clipr_confidence(model, n_boot=n_boot, n_null=n_null)
        t_cached = time.perf_counter() - t0
        # with the run's ensemble (lcd ensemble): the spread between networks joins the bootstrap
        ens = Ensemble.load(Path(tmp) / "run", model)
        conf_ens, t_ens = None, None
        if ens is not None:
            t0 = time.perf_counter()
            conf_ens = clipr_confidence(model, n_boot=n_boot, n_null=n_null, ensemble=ens.models(model)[1:])
            t_ens = time.perf_counter() - t0
    truth = read_screen(demo_screen_path()).truth["causal_matrix"]
    d = truth.shape[0]
    off = ~np.eye(d, dtype=bool)
    nz = truth != 0

    def scores(c) -> dict:
        stable = (c.sign_stability >= 0.9) & off
        return {"coverage_all": float(((truth >= c.lower) & (truth <= c.upper))[off].mean()),
                "n_stable": int(stable.sum()),
                "stable_sign_accuracy_true_edges": float((np.sign(c.effects) == np.sign(truth))[stable & nz].mean()),
                "median_width": float(np.median((c.upper - c.lower)[off]))}

    out = {"n_boot": n_boot, "n_null": n_null, "seconds_readout": t_readout, "seconds_confidence": t_conf,
           "seconds_confidence_without_cached_point": t_conf_cold, "seconds_cached": t_cached,
           "ratio_to_readout": t_conf / t_readout, **{k: v for k, v in conf.params.items() if k.startswith("seconds")},
           **scores(conf), "null_q99": conf.null_threshold, "n_exceeding_null": conf.n_exceeding(),
           "n_edges": int(off.sum())}
    print(f"demo: read-out {t_readout:.1f}s, confidence {t_conf:.1f}s (ratio {out['ratio_to_readout']:.2f}; "
          f"{t_conf_cold:.1f}s with an uncached point estimate), cached {t_cached:.3f}s; coverage of truth "
          f"{out['coverage_all']:.3f}; {out['n_stable']} stable edges, sign acc {out['stable_sign_accuracy_true_edges']:.3f}; "
          f"null q99 {out['null_q99']:.3g}: {out['n_exceeding_null']} of {out['n_edges']} edges exceed it", flush=True)
    if conf_ens is not None:
        out["ensemble"] = {"networks": len(ens) + 1, "seconds": t_ens, "ratio_to_readout": t_ens / t_readout,
                           **{k: v for k, v in conf_ens.params.items() if k.startswith("seconds")}, **scores(conf_ens)}
        e = out["ensemble"]
        print(f"demo with the {e['networks']}-network ensemble: {t_ens:.1f}s (ratio {e['ratio_to_readout']:.2f}); "
              f"coverage of truth {e['coverage_all']:.3f}; {e['n_stable']} stable edges, sign acc "
              f"{e['stable_sign_accuracy_true_edges']:.3f}; median width {e['median_width']:.3g} "
              f"(cells only {out['median_width']:.3g})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="linear,demo")
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=100)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--k-fractions", default="1,0.5", help="perturbed genes K as fractions of d")
    ap.add_argument("--out", default="benchmarks/results/confidence.json")
    args = ap.parse_args()
    parts = args.parts.split(",")
    res = {"platform": platform.platform(), "python": platform.python_version(), "args": vars(args)}
    if "linear" in parts:
        res["linear"] = part_linear(args.d, args.n_boot, [int(s) for s in args.seeds.split(",")],
                                    fractions=tuple(float(f) for f in args.k_fractions.split(",")))
    if "demo" in parts:
        res["demo"] = part_demo(args.n_boot)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

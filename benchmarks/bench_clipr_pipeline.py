"""CLIPR on the paper's linear protocol, full pipeline: simulate → train LCD → CLIPR → recovery.

METHOD.md §8 (linear generator, no measurement model), §4 (both CLIPR variants), §7 (3-class sign
AUROC, macro-F1, Pearson of off-diagonal effects against the true matrix, rows = sources).

    python benchmarks/bench_clipr_pipeline.py                        # the full grid (hours on a CPU)
    python benchmarks/bench_clipr_pipeline.py --graphs er --ks 50 100 --seeds 0 --minutes 4
    python benchmarks/bench_clipr_pipeline.py --device cuda --jobs 6 --tag h200   # the grid on one GPU

Prints a table and writes benchmarks/results/clipr_pipeline[_TAG].json (after every configuration, so
a run cut short keeps what it finished). ``--jobs N`` trains N configurations at once in separate
processes (a small d = 100 model leaves a GPU mostly idle; on a CPU keep 1).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from lcd_core.data import screen_from_anndata
from lcd_core.model import apply_overrides, get_clipr, get_preset, train
from lcd_core.simulation import simulate_linear
from lcd_core.tl import causal_recovery

RESULTS = Path(__file__).parent / "results"


def run_one(d: int, k: int, graph: str, seed: int, minutes: float, overrides: list[str], device: str) -> dict:
    adata = simulate_linear(d, n_perturbed=k, n_cells=200, graph=graph, counts=False, seed=seed)
    screen = screen_from_anndata(adata)
    truth = np.asarray(screen.truth["causal_matrix"], dtype=float)
    cfg = apply_overrides(get_preset("demo", seed=seed), [
        "stage2.hidden=1024", "stage2.emb_dim=256", "stage2.batch_size=1024", "stage2.steps=3000", *overrides])
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model = train(screen, Path(tmp) / "run", config=cfg, device=device,
                      max_seconds_per_stage=minutes * 60 if minutes else None)
        t_train = time.time() - t0
        row = {"d": d, "K": k, "graph": graph, "seed": seed, "train_s": round(t_train, 1),
               "stage2_steps": cfg.stage2.steps}
        # "paper" at its default reference point (the control mean); "paper_origin" at the paper's own
        for name, variant, extra in (("paper", "paper", {}), ("paper_origin", "paper", {"ref_point": "origin"}),
                                     ("directed", "directed", {})):
            t1 = time.time()
            res = get_clipr(model, variant=variant, use_cache=False, **extra)
            rec = causal_recovery(res.effects, truth)
            row[name] = {**{k_: round(float(v), 4) for k_, v in rec.items()}, "seconds": round(time.time() - t1, 1)}
        # the ceiling of the paper's variant: -Sigma^-1 of the true law (a symmetric matrix)
        cov = np.asarray(screen.truth["latent_cov"], dtype=float)
        row["ceiling_symmetric"] = {k_: round(float(v), 4) for k_, v in causal_recovery(-np.linalg.inv(cov).T, truth).items()}
    return row


def _run_job(job: tuple) -> dict:
    *config, threads = job
    torch.set_num_threads(threads)
    try:
        return run_one(*config)
    except Exception as e:  # one failed configuration must not lose the others
        d, k, graph, seed = config[:4]
        return {"d": d, "K": k, "graph": graph, "seed": seed, "error": f"{type(e).__name__}: {e}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=100)
    p.add_argument("--ks", type=int, nargs="+", default=[30, 50, 70, 100])
    p.add_argument("--graphs", nargs="+", default=["er", "sf"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=0, help="cap on each stage's wall time (0: none)")
    p.add_argument("--set", action="append", default=[], help="training override, e.g. stage2.steps=5000")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="configurations trained at once (processes)")
    p.add_argument("--tag", default="", help="suffix of the results file")
    args = p.parse_args()
    out = RESULTS / f"clipr_pipeline{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    jobs = [(args.d, k, graph, seed, args.minutes, args.set, args.device, threads)
            for graph in args.graphs for k in args.ks for seed in args.seeds]
    rows = []
    with mp.get_context("spawn").Pool(max(1, args.jobs)) as pool:
        for row in pool.imap_unordered(_run_job, jobs):
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    rows = [r for r in rows if "error" not in r]
    rows.sort(key=lambda r: (r["graph"], -r["K"], r["seed"]))
    print(f"\n{'graph':5} {'K':>4} {'seed':>4} | {'paper AUROC':>11} {'F1':>5} {'r':>5} | "
          f"{'origin AUROC':>12} | {'directed AUROC':>14} {'F1':>5} {'r':>5} | {'train s':>7}")
    for r in rows:
        pa, di = r["paper"], r["directed"]
        print(f"{r['graph']:5} {r['K']:>4} {r['seed']:>4} | {pa['sign_auroc']:>11.3f} {pa['sign_f1']:>5.2f} "
              f"{pa['pearson']:>5.2f} | {r.get('paper_origin', {}).get('sign_auroc', float('nan')):>12.3f} | {di['sign_auroc']:>14.3f} {di['sign_f1']:>5.2f} {di['pearson']:>5.2f} | "
              f"{r['train_s']:>7.0f}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

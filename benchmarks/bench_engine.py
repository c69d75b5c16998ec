"""The engine on this machine, in one run: training steps per second (paper settings vs our presets),
the wall time of ``lcd train --preset demo``, and prediction latency of the reference and fast samplers.

    python benchmarks/bench_engine.py              # everything (~10 min on an idle 2-core CPU)
    python benchmarks/bench_engine.py --skip-train # without the end-to-end demo training

The reference sampler's 15,000 evaluations are timed on its first level (500 steps) and extrapolated
×30 (every level costs the same); the table says so. Prints a table, writes
benchmarks/results/engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from lcd_core.model import get_preset
from lcd_core.module import ScoreNet, StackedGenerators, ZIPNoise, tempered_evidence_loss
from lcd_core.sampling import annealed_langevin, edm_sampler

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "engine.json"


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def stage1_step_seconds(cfg, d: int, k: int, repeats: int = 3) -> float:
    """One stage-1 step as the trainer does it: K' conditions × B cells × M latent samples."""
    kk = cfg.conditions_per_step or k
    gen = StackedGenerators(k, d, kind=cfg.generator, latent_dim=cfg.latent_dim, width=cfg.width,
                            n_blocks=cfg.n_blocks, gene_hidden=cfg.gene_hidden, n_gene_blocks=cfg.n_gene_blocks)
    noise = ZIPNoise(np.full(d, 10.0))
    opt = torch.optim.Adam([*gen.parameters(), *noise.parameters()], lr=1e-3)
    y = torch.poisson(torch.full((kk, cfg.batch_size, d), 5.0))
    index = torch.arange(kk)

    def step():
        s = gen.sample(cfg.n_samples, None, index)
        loss = tempered_evidence_loss(noise.log_likelihood_matrix(y, s), cfg.temps).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, repeats)


def stage2_step_seconds(cfg, d: int, p: int, repeats: int = 3) -> float:
    net = ScoreNet(d, p, hidden=cfg.hidden, n_layers=cfg.n_layers, emb_dim=cfg.emb_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(cfg.batch_size, d)
    pert = torch.zeros(cfg.batch_size, p)
    pert[torch.arange(cfg.batch_size), torch.randint(0, p, (cfg.batch_size,))] = 1

    def step():
        net.loss(x, pert).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, repeats)


def sampler_seconds(d: int, n_cells: int = 500, hidden: int = 1024) -> dict:
    net = ScoreNet(d, d, hidden=hidden, n_layers=2, emb_dim=1024).eval()
    pert = torch.zeros(1, d)
    pert[0, :2] = 1  # an unseen double
    gen = torch.Generator().manual_seed(0)
    x0 = net.sde.prior_sampling((n_cells, d), gen, scale=1.0)
    with torch.inference_mode():
        t_fast = _time(lambda: edm_sampler(net.score, net.sde, x0, pert, generator=gen), 2)
        # reference: one level of 500 Langevin steps, ×30 levels
        sig = net.sde.sigmas[:1]
        t_level = _time(lambda: annealed_langevin(net.score, net.sde, x0, pert, sigmas=sig, generator=gen), 1)
    return {"fast_s": t_fast, "reference_s_extrapolated": t_level * net.sde.n_levels}


def demo_training() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "lcd_core.cli", "train", str(ROOT / "assets" / "demo_screen.h5ad"),
                               "--out", f"{tmp}/run", "--preset", "demo", "--quiet"], capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode:
            raise SystemExit(proc.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_s": wall, "peak_rss_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    demo, paper = get_preset("demo"), get_preset("paper")
    d, k = 144, 82  # the demo screen's genes and training conditions
    rows = {
        "stage1_s_per_step": {"paper": stage1_step_seconds(paper.stage1, d, k, repeats=1),
                              "demo": stage1_step_seconds(demo.stage1, d, k)},
        "stage2_s_per_step": {"paper": stage2_step_seconds(paper.stage2, d, d, repeats=2),
                              "demo": stage2_step_seconds(demo.stage2, d, d)},
        "predict_500_cells": {f"d={dd}": sampler_seconds(dd) for dd in (100, 1000)},
    }
    if not args.skip_train:
        rows["lcd_train_demo"] = demo_training()
    print(f"{'item':34} {'reference / paper':>18} {'ours':>10} {'ratio':>7}")
    for stage in ("stage1_s_per_step", "stage2_s_per_step"):
        r = rows[stage]
        print(f"{stage:34} {r['paper']:>18.3f} {r['demo']:>10.3f} {r['paper'] / r['demo']:>6.0f}x")
    for dd, r in rows["predict_500_cells"].items():
        print(f"{'predict 500 cells ' + dd:34} {r['reference_s_extrapolated']:>17.1f}* {r['fast_s']:>10.2f} "
              f"{r['reference_s_extrapolated'] / r['fast_s']:>6.0f}x")
    if "lcd_train_demo" in rows:
        r = rows["lcd_train_demo"]
        print(f"{'lcd train --preset demo (wall s)':34} {'':>18} {r['wall_s']:>10.0f}   peak RSS {r['peak_rss_mb']:.0f} MB")
    print("* reference sampler: first of 30 levels timed, ×30")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Benchmark: where stage 2 shrinks the knockouts' mean shifts on the real Papalexi screen (issue 13.4).

Stage 1 (demo preset) on every condition of ../shared/data/papalexi2021_thp1_subset.h5ad, then stage 2 (demo
preset, ``--steps``), once as trained today and once with the middle noise levels drawn more often
(``--mid-boost``, an experiment defined here, not an option of lcd_core). For each network, in stage 2's own
space (standardised latents), the median over knockouts of the slope of the generated mean shift on the
training latents' mean shift over each knockout's top-20 genes (1 = no shrinkage):

- the denoiser's mean output on noisy training latents, per noise level;
- the fast sampler's cells with its chains started from N(0, I) (as shipped) and from the VE prior N(0, σ_max² I);
- the shipped start's chains step by step (after recentring at σ_max, then each grid level).

    .venv/bin/python benchmarks/bench_shrinkage.py [--steps 2000] [--cells 500] [--mid-boost 3]

Writes ``benchmarks/results/shrinkage_papalexi.json`` and prints a table. ~6 minutes on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "papalexi2021_thp1_subset.h5ad"
MID = (0.3, 5.0)  # σ range drawn more often with --mid-boost (standardised units)


def slope(train_shift: np.ndarray, shift: np.ndarray, top: int = 20) -> float:
    """Median over knockouts of the least-squares slope of ``shift`` on ``train_shift`` over each one's top genes."""
    out = []
    for a_all, b_all in zip(train_shift, shift):
        idx = np.argsort(-np.abs(a_all))[:top]
        a, b = a_all[idx], b_all[idx]
        out.append(float(a @ b / (a @ a)))
    return float(np.median(out))


def mid_weighted_loss(boost: float):
    """The DSM loss of lcd_core.module with levels drawn ∝ 1 + boost · [σ in MID] instead of uniformly."""
    def loss(net, x, pert, generator=None, *, index=None):
        sig = net.sde.sigmas.to(x.device)
        w = 1.0 + boost * ((sig >= MID[0]) & (sig <= MID[1])).to(torch.float32)
        level = torch.multinomial(w, x.shape[0], replacement=True, generator=generator)
        sigma = sig[level].to(x.dtype)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        denoised = net.denoise(x + sigma[:, None] * eps, level, pert, index=index)
        return 0.5 * ((denoised - x) ** 2).mean(1) / sigma**2
    return loss


def measure(net, x, pert, n_cells: int) -> dict:
    from lcd_core.sampling import edm_sampler

    d = x[0].shape[1]
    means = np.stack([xi.mean(0) for xi in x])
    tshift = means[1:] - means[0]
    out: dict = {"denoiser": {}, "generated": {}, "trajectory": {}}
    with torch.inference_mode():
        for level in (0, 5, 10, 15, 20, 29):
            sigma = float(net.sde.sigmas[level])
            dm = []
            for k, xi in enumerate(x):
                clean = torch.as_tensor(xi[:1500])
                g = torch.Generator().manual_seed(k)
                noisy = clean + sigma * torch.randn(clean.shape, generator=g)
                dm.append(net.denoise(noisy, torch.tensor(level), torch.as_tensor(pert[k])[None].expand(len(clean), -1))
                          .double().mean(0).numpy())
            dm = np.stack(dm)
            out["denoiser"][f"{sigma:.3g}"] = slope(tshift, dm[1:] - dm[0])
        # the fast sampler as `lcd_core.sampling.sample` runs it (32 evaluations), from two starts; the
        # shipped start's chains are also followed step by step (edm_sampler's on_step)
        for name, scale in (("start N(0, I) (shipped)", 1.0), ("start N(0, sigma_max^2 I)", net.sde.sigma_max)):
            gm, steps = [], {}
            for k in range(len(x)):
                g = torch.Generator().manual_seed(k)
                x0 = scale * torch.randn(n_cells, d, generator=g, dtype=torch.float64)
                follow = (lambda s, xs: steps.setdefault(f"{s:.3g}", []).append(xs.mean(0).numpy())) \
                    if scale == 1.0 else None
                gm.append(edm_sampler(net.score, net.sde, x0, torch.as_tensor(pert[k])[None], n_evals=32,
                                      generator=g, on_step=follow).numpy().mean(0))
            gm = np.stack(gm)
            out["generated"][name] = slope(tshift, gm[1:] - gm[0])
            for key, v in steps.items():
                v = np.stack(v)
                out["trajectory"][key] = slope(tshift, v[1:] - v[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="stage-2 steps of each network")
    ap.add_argument("--cells", type=int, default=500, help="generated cells per condition")
    ap.add_argument("--mid-boost", type=float, default=3.0,
                    help="extra weight of the levels in MID (0: only the shipped loss)")
    args = ap.parse_args()
    if not DATA.is_file():
        sys.exit(f"bench_shrinkage: {DATA} is absent (../shared/data/README.md)")
    import lcd_core.module._score as score_module
    from lcd_core import KEYS
    from lcd_core.data import read_screen
    from lcd_core.data._conventions import targets_of
    from lcd_core.model import get_preset
    from lcd_core.model._lcd import multihot
    from lcd_core.model._train import stage2_samples
    from lcd_core.train import fit_stage1, fit_stage2, standardize

    screen = read_screen(DATA)
    cfg = get_preset("demo", seed=0)
    conds = [KEYS.CONTROL] + [c for c in screen.conditions if c != KEYS.CONTROL]
    t0 = time.monotonic()
    latents, *_ = stage2_samples(screen, conds, {c: [] for c in conds}, cfg,
                                 lambda counts, unit, **kw: fit_stage1(counts, unit, cfg.stage1, device="cpu"),
                                 counts_mode=True, with_validation=False)
    x, _, _ = standardize(latents, control_index=0)
    genes = list(screen.genes)
    index = {g: i for i, g in enumerate(genes + sorted({g for c in conds for g in targets_of(c)} - set(genes)))}
    pert = np.stack([multihot(targets_of(c), index) for c in conds]).astype(np.float32)
    res = {"screen": str(DATA.name), "conditions": len(conds), "stage1_seconds": round(time.monotonic() - t0, 1),
           "stage2_steps": args.steps, "cells": args.cells, "mid_range": MID, "networks": {}}
    shipped_loss = score_module.dsm_loss
    for name, boost in (("shipped loss", 0.0), (f"mid levels x{1 + args.mid_boost:g}", args.mid_boost)):
        if name != "shipped loss" and boost <= 0:
            continue
        score_module.dsm_loss = shipped_loss if boost <= 0 else mid_weighted_loss(boost)
        cfg.stage2.steps = args.steps
        t1 = time.monotonic()
        net = fit_stage2(x, pert, cfg.stage2, device="cpu").net
        res["networks"][name] = {"train_seconds": round(time.monotonic() - t1, 1), **measure(net, x, pert, args.cells)}
    score_module.dsm_loss = shipped_loss

    print(f"{'network':<22} {'what':<44} median slope")
    for name, r in res["networks"].items():
        for part in ("denoiser", "generated", "trajectory"):
            for key, v in r[part].items():
                label = {"denoiser": f"denoiser at sigma {key}", "generated": f"generated, {key}",
                         "trajectory": f"shipped chains at sigma {key}"}[part]
                print(f"{name:<22} {label:<44} {v:.3f}")
    out = HERE / "results" / "shrinkage_papalexi.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

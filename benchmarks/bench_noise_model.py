"""Benchmark: does another count model stop stage 1 from shrinking Papalexi's knockout shifts? (issue 13.4)

Stage 1 with the demo preset on every condition of ../shared/data/papalexi2021_thp1_subset.h5ad, once per
measurement model, then 1000 of each condition's latent draws decoded to counts, normalised and log1p'd,
and compared with the measured cells as the fit check compares them (``lcd_core.model._fit.fit_condition``:
top-20 DE genes, shift correlation r and norm ratio "magnitude", 1 = the measured size):

- ``zip``: the shipped zero-inflated Poisson (METHOD.md §1; learned per-gene dropout π);
- ``nb``: negative binomial with mean u·softplus(s) and a learned per-gene dispersion θ, no zero inflation;
- ``zinb``: the same with the learned per-gene π on top.

NB and ZINB are experiments defined here, not options of lcd_core. Their stage-1 log-likelihood stays one
matrix product: log NB(y; μ, θ) = y·log(μ/(θ+μ)) − θ·log(θ+μ) + terms of y and θ only.

    .venv/bin/python benchmarks/bench_noise_model.py [--models zip,nb,zinb] [--theta0 5]

Writes ``benchmarks/results/noise_model_papalexi.json`` and prints a table. ~3 minutes on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "papalexi2021_thp1_subset.h5ad"
STRONG = ["IFNGR1", "JAK2", "STAT1", "SMAD4"]  # the knockouts issue 13 quotes


def nb_noise_class(zero_inflated: bool, theta0: float):
    """A ZIPNoise look-alike with negative-binomial counts (and, if ``zero_inflated``, ZIP's dropout on top)."""
    from lcd_core.module._noise import ZIPNoise

    class NBNoise(ZIPNoise):
        def __init__(self, unit_scale, dropout_init=0.05):
            super().__init__(unit_scale, dropout_init if zero_inflated else 1e-4)
            self.log_theta = torch.nn.Parameter(torch.full_like(self.unit_scale, float(np.log(theta0))))
            self.dropout_logit.requires_grad_(zero_inflated)

        def log_likelihood_matrix(self, y, s):
            y = y.to(s.dtype)
            theta = torch.exp(self.log_theta)
            log_mu = self.log_rate(s)  # (..., M, d)
            log_t_mu = torch.logaddexp(self.log_theta.expand_as(log_mu), log_mu)  # log(θ + μ)
            cell_const = torch.lgamma(y + theta) - torch.lgamma(theta) - torch.lgamma(y + 1.0) + theta * self.log_theta
            if not zero_inflated:
                per_sample = -(theta * log_t_mu).sum(-1).unsqueeze(-2)  # (..., 1, M)
                return y @ (log_mu - log_t_mu).transpose(-1, -2) + per_sample + cell_const.sum(-1, keepdim=True)
            log_pi, log_1mpi = F.logsigmoid(self.dropout_logit), F.logsigmoid(-self.dropout_logit)
            log_p0 = torch.logaddexp(log_pi.expand_as(log_mu), log_1mpi + theta * (self.log_theta - log_t_mu))
            pos = (y > 0).to(s.dtype)
            cell_part = torch.cat([y, pos, 1.0 - pos], dim=-1)
            sample_part = torch.cat([log_mu - log_t_mu, -theta * log_t_mu, log_p0], dim=-1)
            const = (pos * (cell_const + log_1mpi)).sum(-1, keepdim=True)
            return cell_part @ sample_part.transpose(-1, -2) + const

        @torch.no_grad()
        def sample_counts(self, s, generator=None, rate_scale=None):
            mu = self.rate(s).clamp_min(1e-8)
            theta = torch.exp(self.log_theta).expand_as(mu)
            counts = torch.poisson(torch.distributions.Gamma(theta, theta / mu).sample(), generator=generator)
            if zero_inflated:
                counts = counts * (torch.rand(s.shape, generator=generator) >= self.dropout)
            return counts

    return NBNoise


def run(model: str, theta0: float, n_cells: int) -> dict:
    import lcd_core.train._stage1 as stage1
    from lcd_core import KEYS
    from lcd_core.data import read_screen
    from lcd_core.model import get_preset
    from lcd_core.model._fit import fit_condition
    from lcd_core.model._train import stage2_samples
    from lcd_core.module._noise import ZIPNoise
    from lcd_core.pp import normalize_log1p

    stage1.ZIPNoise = ZIPNoise if model == "zip" else nb_noise_class(model == "zinb", theta0)
    try:
        screen = read_screen(DATA)
        cfg = get_preset("demo", seed=0)
        if model == "nb":  # no zero inflation: the moment warm start must not assume the estimated π either
            cfg.stage1.dropout_init = 1e-4
        conds = [KEYS.CONTROL] + [c for c in screen.conditions if c != KEYS.CONTROL]
        fitted = {}

        def fit1(counts, unit, **kw):
            fitted["res"] = stage1.fit_stage1(counts, unit, cfg.stage1, device="cpu")
            return fitted["res"]

        t0 = time.monotonic()
        latents, *_ = stage2_samples(screen, conds, {c: [] for c in conds}, cfg, fit1, counts_mode=True,
                                     with_validation=False)
        seconds = time.monotonic() - t0
    finally:
        stage1.ZIPNoise = ZIPNoise
    res = fitted["res"]
    noise = res.noise
    torch.manual_seed(0)
    with torch.no_grad():
        cells = {c: normalize_log1p(noise.sample_counts(torch.as_tensor(s[:n_cells])).numpy())
                 for c, s in zip(conds, latents)}
    control = screen.log1p(KEYS.CONTROL)
    rng = np.random.default_rng(0)
    per = {}
    for c in conds[1:]:
        e = fit_condition(cells[c], screen.log1p(c), control, rng=rng)
        per[c] = {"r": e["r"], "magnitude": e["magnitude"], "r_ceiling": e["r_ceiling"]}
    out = {
        "stage1_seconds": round(seconds, 1),
        "final_loss": res.history[-1]["loss"],
        "dropout_mean": float(noise.dropout.mean()),
        "zeros_measured": float(np.mean([(screen.counts(c) == 0).mean() for c in conds])),
        "zeros_decoded": float(np.mean([(cells[c] == 0).mean() for c in conds])),
        "median_r": float(np.median([v["r"] for v in per.values()])),
        "median_magnitude": float(np.median([v["magnitude"] for v in per.values()])),
        "conditions": per,
    }
    if hasattr(noise, "log_theta"):
        out["theta_median"] = float(torch.exp(noise.log_theta).median())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="zip,nb,zinb")
    ap.add_argument("--theta0", type=float, default=5.0, help="initial NB dispersion θ of every gene")
    ap.add_argument("--cells", type=int, default=1000, help="decoded cells per condition")
    args = ap.parse_args()
    if not DATA.is_file():
        sys.exit(f"bench_noise_model: {DATA} is absent (../shared/data/README.md)")
    results = {"screen": DATA.name, "theta0": args.theta0, "cells": args.cells, "models": {}}
    for model in args.models.split(","):
        results["models"][model] = run(model, args.theta0, args.cells)

    print(f"{'model':<6} {'median r':>9} {'magnitude':>10} {'π mean':>7} {'θ median':>9} {'zeros':>11} {'loss':>8}  "
          + " / ".join(STRONG))
    for model, r in results["models"].items():
        strong = " / ".join(f"{r['conditions'][g]['r']:.2f}, {r['conditions'][g]['magnitude']:.2f}" for g in STRONG)
        print(f"{model:<6} {r['median_r']:>9.3f} {r['median_magnitude']:>10.3f} {r['dropout_mean']:>7.2f} "
              f"{r.get('theta_median', float('nan')):>9.2f} {r['zeros_decoded']:>5.3f}/{r['zeros_measured']:.3f} "
              f"{r['final_loss']:>8.1f}  {strong}")
    out = HERE / "results" / "noise_model_papalexi.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Is the fast sampler within 1.2× of the reference sampler in MMD²? (METHOD.md §3, §7, §8)

The fast sampler (``lcd_core.sampling`` ``"fast"``, the default of ``lcd predict``) against the reference
annealed Langevin sampler (30 levels × 500 steps = 15,000 network evaluations per cell), both judged by
unbiased RBF MMD² against exact samples of the true law, with enough cells that the estimator's noise
no longer hides the difference (at 500 cells it was ±7e-5, larger than the gap).

1. Simulate the paper's linear Gaussian screen without a measurement model
   (``simulate_linear(d, n_perturbed=K, n_cells=200, counts=False)``; default d = K = 100) and train LCD
   on all of it (``demo`` preset; stage 2 at width 1024, E = 256, batch 1024, ``--steps`` steps).
2. Conditions: control, ``--singles`` training singles and ``--doubles`` doubles of perturbed genes (never
   trained on; additive embeddings). Exact samples of each condition's stationary law
   ``N(−A⁻¹(b + c_T), Σ)`` come from :class:`lcd_core.simulation.LinearSDE`, rebuilt from
   ``uns["lcd_truth"]``, in latent state space, which is the space :meth:`LCD.predict` returns for a
   screen without counts (``s = μ + σ ⊙ x``).
3. ``N`` cells per condition from the reference sampler and from the fast sampler at a few budgets, all
   conditions in one batch of chains (one condition index per chain), and once more through
   :meth:`LCD.predict` itself (the ``lcd predict`` path: one batch per condition, the run's default budget;
   a failure there is recorded, not fatal). MMD² of each against the same exact set ``Y`` (paired), plus
   - ``floor``: MMD² of a second, independent exact set ``Y'`` against ``Y`` (expectation 0; its spread
     across conditions is the estimator's noise at this ``N``);
   - ``ctrl_vs_cond``: exact control cells against ``Y`` (how far a condition is from doing nothing).
4. Per condition and the mean over conditions; the ratio fast / reference of the mean MMD² (raw) and
   of the mean excess over the floor, each with a 95 % bootstrap interval over conditions (paired
   resampling), a delta-method standard error, the number of conditions where fast is better, and a
   verdict on 1.2×; for all conditions, for the trained ones (control + singles) and for the unseen
   combinations separately (the two behave differently, so the pooled ratio depends on the mix).

Why 17 conditions × 2000 cells by default: a first H200 run at 9 × 4000 (5000 steps) put the estimator's
noise (floor sd 1.0e-5) at ~1 % of the MMD² values (4e-4 … 3e-3), and the interval on the ratio came
from the spread between conditions (fast better than the reference on control and singles, worse on
unseen doubles). Halving N (noise ~2e-5) to double the conditions, at the same number of chains,
narrows what limits the answer.

The MMD² is METHOD.md §7's (:func:`lcd_core.metrics.mmd`: mixture of 10 RBF kernels, length-scales
``logspace(−2, 1, 10)·√d``). On a GPU the same statistic is computed on the device (:func:`mmd2_torch`;
a CPU pass at N = 4000, d = 100 takes seconds per pair); one pair is checked against
:func:`lcd_core.metrics.mmd` and both values stored. On a GPU, sampler chains and their noise live on the
device (inside a ``torch.device`` context with a CUDA generator), so that drawing noise is not a CPU
bottleneck.

Usage::

    python benchmarks/bench_sampler_quality.py --tag h200                # the real run: GPU, ~100 s on an H200
    python benchmarks/bench_sampler_quality.py --small --tag cpu_small   # CPU smoke test (< 1 min, 2 cores)
    python benchmarks/bench_sampler_quality.py --cells 4000 --singles 4 --doubles 4 --steps 5000
    python benchmarks/bench_sampler_quality.py --conditions ctrl G0003 G0003+G0017

``--ref-steps`` shortens the reference sampler (steps per level); it is for smoke tests only, and the
JSON and the table flag it: a shortened reference is not the reference of METHOD.md §3.

Writes ``benchmarks/results/sampler_quality[_TAG].json`` after every phase (a run cut short keeps what it
measured) and prints progress lines (flushed) and a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import inspect
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lcd_core._constants import KEYS
from lcd_core._device import resolve_device
from lcd_core.data import screen_from_anndata
from lcd_core.data._conventions import parse_label
from lcd_core.metrics import mmd, rbf_length_scales
from lcd_core.model import LCD, apply_overrides, get_preset, train
from lcd_core.sampling import SAMPLERS
from lcd_core.simulation import LinearSDE, simulate_linear

RESULTS = Path(__file__).parent / "results"
T0 = time.perf_counter()
WITHIN = 1.2  # the claim under test: fast MMD² ≤ 1.2 × reference MMD²
#: the budget of ``lcd predict`` (a run's ``sampler_evals`` is None unless set: the sampler's own default)
DEFAULT_EVALS = inspect.signature(SAMPLERS["fast"]).parameters["n_evals"].default


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


# -- the truth ----------------------------------------------------------------------------------------
def true_law(truth: dict) -> LinearSDE:
    """The simulated :class:`LinearSDE`, rebuilt from ``uns["lcd_truth"]`` (its stationary laws are exact)."""
    arr = {k: np.asarray(truth[k], dtype=float) for k in ("causal_matrix", "sde_matrix", "bias", "shifts", "latent_cov")}
    return LinearSDE(graph=np.asarray(truth["graph"], dtype=bool), causal_matrix=arr["causal_matrix"],
                     sde_matrix=arr["sde_matrix"], bias=arr["bias"], shifts=arr["shifts"], cov=arr["latent_cov"])


def choose_conditions(genes: list[str], perturbed: list[str], n_singles: int, n_doubles: int,
                      seed: int) -> list[dict]:
    """Control, ``n_singles`` training singles and ``n_doubles`` unseen doubles of perturbed genes.

    Returns
    -------
    One dict per condition: ``label`` (canonical), ``kind``, ``targets`` (gene indices).
    """
    rng = np.random.default_rng(seed)
    index = {g: i for i, g in enumerate(genes)}
    singles = rng.choice(perturbed, size=min(n_singles, len(perturbed)), replace=False)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n_doubles:
        a, b = sorted(rng.choice(perturbed, size=2, replace=False))
        if (a, b) not in pairs:
            pairs.append((a, b))
    out = [{"label": KEYS.CONTROL, "kind": "control", "targets": []}]
    out += [{"label": parse_label(g), "kind": "single (trained)", "targets": [index[g]]} for g in singles]
    out += [{"label": parse_label(f"{a}+{b}"), "kind": "double (unseen)", "targets": [index[a], index[b]]}
            for a, b in pairs]
    return out


# -- the distance ---------------------------------------------------------------------------------------
def mmd2_on(device: torch.device):
    """``mmd2(x (n, d), y (m, d)) -> float``: :func:`lcd_core.metrics.mmd` on the CPU, :func:`mmd2_torch`
    on a GPU (the same statistic; a CPU pass at N = 4000, d = 100 takes seconds per pair)."""
    if device.type != "cuda":
        return mmd
    return lambda x, y: mmd2_torch(x, y, device)


def mmd2_torch(x: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    """:func:`lcd_core.metrics.mmd`'s unbiased MMD² (METHOD.md §7: mean over the 10 RBF length-scales of
    :func:`lcd_core.metrics.rbf_length_scales`) from full float64 Gram matrices on ``device``.

    ``x`` is ``(n, d)``, ``y`` is ``(m, d)``; memory: two ``(n, m)`` float64 blocks at a time.
    """
    n, m = len(x), len(y)
    centre = (x.sum(0) + y.sum(0)) / (n + m)  # distances are translation-invariant; centring keeps precision
    xt = torch.as_tensor(x - centre, dtype=torch.float64, device=device)
    yt = torch.as_tensor(y - centre, dtype=torch.float64, device=device)
    inv = torch.as_tensor(1.0 / (2.0 * rbf_length_scales(x.shape[1]) ** 2), device=device)

    def kernel_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (10,) sums over all pairs
        d2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # exact 0 on a diagonal
        return torch.stack([torch.exp(-c * d2).sum() for c in inv])

    # unbiased (Gretton et al. 2012, eq. 3): drop the n (m) diagonal terms k(x, x) = 1
    per_scale = ((kernel_sums(xt, xt) - n) / (n * (n - 1)) + (kernel_sums(yt, yt) - m) / (m * (m - 1))
                 - 2.0 * kernel_sums(xt, yt) / (n * m))
    return float(per_scale.mean())


# -- sampling -------------------------------------------------------------------------------------------
def sample_batched(model: LCD, labels: list[str], n: int, name: str, seed: int, *, progress: bool = False,
                   **kw) -> tuple[dict[str, np.ndarray], float]:
    """``n`` cells of every label in one batch of ``len(labels)·n`` chains, as :meth:`LCD.predict` would
    return them for a screen without counts (state space ``s = μ + σ ⊙ x``).

    Returns
    -------
    ``({label: (n, d) float64}, seconds)``.
    """
    dev, d = model.device, model.n_genes
    table = model.condition_multihot(labels)  # (C, P)
    net = model.net

    def score_fn(x, sigma, cond):  # cond: (C·n,) long, the row of `table` of each chain
        return net.score(x, float(sigma), table, index=cond)

    cond = torch.arange(len(labels), device=dev).repeat_interleave(n)
    sampler = SAMPLERS[name]
    _sync(dev)
    t0 = time.perf_counter()
    with torch.device(dev), torch.inference_mode():
        gen = torch.Generator(device=dev).manual_seed(seed)
        x = net.sde.prior_sampling((len(cond), d), gen, scale=1.0)  # METHOD.md §3: chains start at N(0, I)
        if name == "reference" and progress:  # level by level (the same dynamics), to report progress
            sigmas = net.sde.sigmas
            for k, sigma in enumerate(sigmas.tolist()):
                x = sampler(score_fn, net.sde, x, cond, sigmas=torch.tensor([sigma], dtype=torch.float64, device="cpu"),
                            generator=gen, **kw)
                if k % 5 == 4 or k == len(sigmas) - 1:
                    _sync(dev)
                    el = time.perf_counter() - t0
                    log(f"  reference: level {k + 1}/{len(sigmas)} (σ = {sigma:.3g}) after {el:.1f} s, "
                        f"~{el / (k + 1) * (len(sigmas) - k - 1):.0f} s to go")
        else:
            x = sampler(score_fn, net.sde, x, cond, generator=gen, **kw)
        _sync(dev)
    sec = time.perf_counter() - t0
    s = model.mu + model.sd * x.double().cpu().numpy()
    return {lbl: s[i * n:(i + 1) * n] for i, lbl in enumerate(labels)}, sec


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# -- statistics -----------------------------------------------------------------------------------------
def ratio_summary(fast: np.ndarray, ref: np.ndarray, floor: np.ndarray, *, n_boot: int = 20000,
                  seed: int = 0) -> dict:
    """fast / reference over conditions: ratio of mean MMD² (raw) and of mean excess over the floor.

    Parameters
    ----------
    fast, ref, floor
        ``(C,)`` per-condition MMD² (paired: the same exact set ``Y``).

    Returns
    -------
    Point ratios, 95 % bootstrap intervals (conditions resampled with replacement, paired), delta-method
    standard errors, the bootstrap share of ratios ≤ 1.2, per-condition ratios and a verdict.
    """
    rng = np.random.default_rng(seed)
    c = len(ref)
    out = {"n_conditions": c}
    for key, f, r in (("raw", fast, ref), ("excess", fast - floor, ref - floor)):
        ratio = float(f.mean() / r.mean())
        idx = rng.integers(0, c, size=(n_boot, c))
        boot = f[idx].mean(1) / r[idx].mean(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        # delta method for a ratio of paired means
        if c > 1:
            cv = np.cov(f, r, ddof=1) / c
            se = abs(ratio) * math.sqrt(max(cv[0, 0] / f.mean() ** 2 + cv[1, 1] / r.mean() ** 2
                                            - 2 * cv[0, 1] / (f.mean() * r.mean()), 0.0))
        else:
            se = float("nan")
        if hi < WITHIN:
            verdict = f"within {WITHIN}x (95% CI upper {hi:.2f} < {WITHIN})"
        elif lo > WITHIN:
            verdict = f"worse than {WITHIN}x (95% CI lower {lo:.2f} > {WITHIN})"
        else:
            verdict = f"NOT resolved: 95% CI [{lo:.2f}, {hi:.2f}] contains {WITHIN}"
        out[key] = {"ratio": ratio, "se_delta": se, "ci95_boot": [float(lo), float(hi)],
                    "p_boot_le_1.2": float(np.mean(boot <= WITHIN)), "verdict": verdict}
    per = fast / ref
    out["per_condition_ratio"] = per.tolist()
    pos = (fast > 0) & (ref > 0)
    if pos.sum() > 1:
        lr = np.log(fast[pos] / ref[pos])
        out["geomean_ratio"] = {"value": float(np.exp(lr.mean())), "se_log": float(lr.std(ddof=1) / math.sqrt(len(lr))),
                                "n": int(pos.sum())}
    return out


# -- main -----------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--d", type=int, default=100, help="genes (all perturbed unless --k)")
    p.add_argument("--k", type=int, default=None, help="perturbed genes (default: d)")
    p.add_argument("--train-cells", type=int, default=200, help="training cells per condition (paper: 200)")
    p.add_argument("--cells", type=int, default=2000, help="N: generated and exact cells per condition")
    p.add_argument("--singles", type=int, default=8, help="training singles evaluated")
    p.add_argument("--doubles", type=int, default=8, help="unseen doubles evaluated")
    p.add_argument("--conditions", nargs="+", default=None,
                   help="explicit labels to evaluate instead (e.g. ctrl G0003 G0003+G0017)")
    p.add_argument("--steps", type=int, default=5000, help="stage-2 training steps")
    p.add_argument("--train-seconds", type=float, default=60.0, help="cap on stage-2 wall time (0: none)")
    p.add_argument("--fast-evals", type=int, nargs="+", default=[16, 32, 64],
                   help=f"fast-sampler budgets (the lcd predict default, {DEFAULT_EVALS}, is always included)")
    p.add_argument("--ref-steps", type=int, default=500,
                   help="reference steps per level; anything but 500 is a SMOKE TEST, not the reference")
    p.add_argument("--small", action="store_true",
                   help="CPU smoke setting: d=20, N=300, ctrl + 3 + 3 conditions, small net, 600 steps, --ref-steps 100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default=None, help="results file suffix: sampler_quality_TAG.json")
    args = p.parse_args()
    overrides = ["stage2.hidden=1024", "stage2.emb_dim=256", "stage2.batch_size=1024"]
    if args.small:
        args.d, args.cells, args.singles, args.doubles = 20, 300, 3, 3
        args.steps = min(args.steps, 600)
        args.ref_steps = min(args.ref_steps, 100)
        args.fast_evals = [16]
        args.tag = args.tag or "small"
        overrides = ["stage2.hidden=256", "stage2.emb_dim=64", "stage2.batch_size=512"]
    overrides.append(f"stage2.steps={args.steps}")
    args.fast_evals = sorted(set(args.fast_evals) | {DEFAULT_EVALS})
    dev = resolve_device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    path = RESULTS / (f"sampler_quality_{args.tag}.json" if args.tag else "sampler_quality.json")
    smoke = args.ref_steps != 500
    report: dict = {"args": vars(args), "smoke_test_reference_shortened": smoke, "device": str(dev),
                    "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "torch": torch.__version__, "load_avg_start": os.getloadavg()[0], "timings_s": {}}

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=float))
        tmp.replace(path)

    log(f"device {report['device_name']}; d={args.d}, N={args.cells}, steps={args.steps}, "
        f"reference {args.ref_steps} steps/level{' (SMOKE TEST: shortened)' if smoke else ''} -> {path}")

    # 1. simulate and train -------------------------------------------------------------------------
    adata = simulate_linear(args.d, n_perturbed=args.k, n_cells=args.train_cells, counts=False, seed=args.seed)
    screen = screen_from_anndata(adata)
    truth = adata.uns[KEYS.TRUTH]
    law = true_law(truth)
    cfg = apply_overrides(get_preset("demo", seed=args.seed), overrides)
    log(f"simulated {adata.n_obs} cells in {len(screen.conditions)} conditions; training stage 2 ({args.steps} steps)")
    every = max(1, args.steps // 10)

    def progress(p):  # a lcd_core.train.Progress
        if p.step % every == 0 or p.step == p.total:
            log(f"  {p.stage} step {p.step}/{p.total} loss {p.record.get('loss', float('nan')):.4f}")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = train(screen, Path(tmp) / "run", config=cfg, device=str(dev), heldout=[], progress=progress,
                      max_seconds_per_stage=args.train_seconds or None)
        events = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    last = [e for e in events if e.get("stage") == "stage2" and e.get("event") == "progress"][-1:]
    report["training"] = {"seconds": time.perf_counter() - t0, "overrides": overrides,
                          "steps_done": last[0]["step"] if last else None,
                          "final_loss": last[0].get("loss") if last else None}
    report["timings_s"]["train"] = report["training"]["seconds"]
    log(f"trained in {report['training']['seconds']:.1f} s")
    save()

    # 2. conditions and exact samples ------------------------------------------------------------------
    genes = screen.genes
    if args.conditions:
        conds = []
        for lbl in args.conditions:
            lbl = parse_label(lbl)
            tg = [] if lbl == KEYS.CONTROL else [genes.index(g) for g in lbl.split(KEYS.COMBO_SEP)]
            kind = "control" if not tg else ("single (trained)" if len(tg) == 1 else "combination")
            conds.append({"label": lbl, "kind": kind, "targets": tg})
        if conds[0]["label"] != KEYS.CONTROL:
            conds.insert(0, {"label": KEYS.CONTROL, "kind": "control", "targets": []})
    else:
        perturbed = [str(g) for g in np.asarray(truth["perturbed"])]
        conds = choose_conditions(genes, perturbed, args.singles, args.doubles, args.seed + 1)
    labels = [c["label"] for c in conds]
    n = args.cells
    exact = {c["label"]: law.sample(c["targets"], n, rng=[args.seed, 101, i]) for i, c in enumerate(conds)}
    exact2 = {c["label"]: law.sample(c["targets"], n, rng=[args.seed, 202, i]) for i, c in enumerate(conds)}
    report["conditions"] = [{"label": c["label"], "kind": c["kind"],
                             "shift_sd_units": float(np.linalg.norm((law.mean(c["targets"]) - law.mean()) / model.sd))}
                            for c in conds]
    log(f"conditions: {', '.join(labels)}; exact samples {n} per condition")
    mmd2 = mmd2_on(dev)
    if dev.type == "cuda":  # the device statistic is lcd_core.metrics.mmd's
        k = min(n, 1000)
        a, b = exact[labels[-1]][:k], exact[KEYS.CONTROL][:k]
        report["mmd_device_check"] = {"device": mmd2(a, b), "lcd_core.metrics.mmd": mmd(a, b), "cells": k}
        log(f"device MMD² check: {report['mmd_device_check']}")

    rows = {lbl: {"label": lbl, "kind": c["kind"]} for lbl, c in zip(labels, conds)}
    report["rows"] = list(rows.values())
    t0 = time.perf_counter()
    for lbl in labels:
        rows[lbl]["floor"] = mmd2(exact2[lbl], exact[lbl])
        rows[lbl]["ctrl_vs_cond"] = None if lbl == KEYS.CONTROL else mmd2(exact2[KEYS.CONTROL], exact[lbl])
    report["timings_s"]["mmd_exact"] = time.perf_counter() - t0
    log(f"floor and control-vs-condition MMD² in {report['timings_s']['mmd_exact']:.1f} s")
    save()

    # 3. samplers -------------------------------------------------------------------------------------
    report["samplers"] = {}
    runs = [(f"fast_{k}", "fast", {"n_evals": k}) for k in args.fast_evals]
    runs.append(("reference", "reference", {"n_steps_per_level": args.ref_steps}))
    for key, name, kw in runs:
        evals = kw.get("n_evals") or 30 * kw["n_steps_per_level"]
        log(f"sampling {key} ({evals} evaluations, {len(labels)} x {n} chains)")
        cells, sec = sample_batched(model, labels, n, name, seed=args.seed + 7, progress=True, **kw)
        t0 = time.perf_counter()
        for lbl in labels:
            rows[lbl][key] = mmd2(cells[lbl], exact[lbl])
        report["samplers"][key] = {"sampler": name, "kw": kw, "evals_per_cell": evals, "seconds": sec,
                                   "mmd_seconds": time.perf_counter() - t0}
        log(f"  {key}: {sec:.1f} s sampling, mean MMD² {np.mean([rows[lbl][key] for lbl in labels]):.3e}")
        save()

    # the `lcd predict` path itself: LCD.predict, one batch per condition, the run's default sampler/budget
    t0 = time.perf_counter()
    try:
        pred = model.predict(labels, n_cells=n, seed=args.seed + 9)
        _sync(dev)
        sec = time.perf_counter() - t0
        for lbl in labels:
            rows[lbl]["predict"] = mmd2(pred.cells[lbl].astype(np.float64), exact[lbl])
        report["samplers"]["predict"] = {"sampler": pred.params["sampler"], "n_evals": pred.params["n_evals"],
                                         "seconds": sec, "note": "LCD.predict (the lcd predict path)"}
        log(f"  LCD.predict ({pred.params['sampler']}, n_evals={pred.params['n_evals']}): {sec:.1f} s")
    except Exception as e:  # reported, not fatal: the batched samplers above are the measurement
        report["samplers"]["predict"] = {"error": f"{type(e).__name__}: {e}"}
        log(f"  LCD.predict failed: {type(e).__name__}: {e}")
    save()

    # 4. summary --------------------------------------------------------------------------------------
    keys = [k for k, _, _ in runs] + (["predict"] if "predict" in rows[labels[0]] else [])
    col = {key: np.array([rows[lbl][key] for lbl in labels]) for key in ["floor", *keys]}
    groups = {"all": labels,
              "trained (ctrl + singles)": [c["label"] for c in conds if c["kind"] in ("control", "single (trained)")],
              "unseen combinations": [c["label"] for c in conds if c["kind"] not in ("control", "single (trained)")]}
    summary = {
        "mean_mmd2": {key: float(v.mean()) for key, v in col.items()},
        "floor": {"mean": float(col["floor"].mean()), "sd": float(col["floor"].std(ddof=1)) if len(labels) > 1 else None,
                  "max_abs": float(np.abs(col["floor"]).max()),
                  "sd_over_mean_reference": (float(col["floor"].std(ddof=1) / col["reference"].mean())
                                             if len(labels) > 1 else None),
                  "note": "expectation 0: its spread is the noise of one estimate at this N"},
        "mean_ctrl_vs_cond": float(np.mean([rows[lbl]["ctrl_vs_cond"] for lbl in labels[1:]])) if len(labels) > 1 else None,
        "default_fast_key": f"fast_{DEFAULT_EVALS}",
        "ratio_vs_reference": {},
    }
    for group, members in groups.items():
        if len(members) < 3:  # too few for an interval
            continue
        at = np.array([labels.index(lbl) for lbl in members])
        summary["ratio_vs_reference"][group] = {
            key: dict(ratio_summary(col[key][at], col["reference"][at], col["floor"][at], seed=args.seed),
                      n_fast_better=int((col[key][at] < col["reference"][at]).sum()))
            for key in keys if key != "reference"}
    report["summary"] = summary
    report["total_seconds"] = time.perf_counter() - T0
    report["load_avg_end"] = os.getloadavg()[0]
    save()
    print_table(report, labels, keys)
    log(f"wrote {path}")


def print_table(report: dict, labels: list[str], keys: list[str]) -> None:
    rows = {r["label"]: r for r in report["rows"]}
    s = report["summary"]
    smoke = " [reference SHORTENED: smoke test]" if report["smoke_test_reference_shortened"] else ""
    print(f"\nMMD² against {report['args']['cells']} exact cells per condition{smoke}")
    print(f"{'condition':<18}{'kind':<17}{'floor':>10}{'ctrl-vs':>10}" + "".join(f"{k:>11}" for k in keys))
    for lbl in labels:
        r = rows[lbl]
        cv = "" if r["ctrl_vs_cond"] is None else f"{r['ctrl_vs_cond']:.2e}"
        print(f"{lbl:<18}{r['kind']:<17}{r['floor']:>10.2e}{cv:>10}" + "".join(f"{r[k]:>11.2e}" for k in keys))
    mean_cv = "" if s["mean_ctrl_vs_cond"] is None else f"{s['mean_ctrl_vs_cond']:.2e}"
    print(f"{'mean':<35}{s['mean_mmd2']['floor']:>10.2e}{mean_cv:>10}" + "".join(f"{s['mean_mmd2'][k]:>11.2e}" for k in keys))
    print(f"{'seconds (sampling)':<55}" + "".join(f"{report['samplers'][k].get('seconds', float('nan')):>11.2f}" for k in keys))
    fl = s["floor"]
    if fl["sd"] is not None:
        print(f"estimator noise: floor sd {fl['sd']:.1e} = {100 * fl['sd_over_mean_reference']:.1f} % of the mean "
              f"reference MMD² (intervals below are then mostly differences between conditions)")
    print(f"\nfast / reference (ratio of mean MMD² over conditions; 95 % bootstrap CI over conditions){smoke}")
    for group, per_key in s["ratio_vs_reference"].items():
        print(f"  {group}")
        for k, v in per_key.items():
            raw, exc = v["raw"], v["excess"]
            g = v.get("geomean_ratio")
            gm = f" | geo-mean {g['value']:.2f} (×/÷ {math.exp(g['se_log']):.2f})" if g else ""
            tag = " (lcd predict default)" if k == s["default_fast_key"] else ""
            print(f"    {k + tag:<32} raw {raw['ratio']:.2f} ± {raw['se_delta']:.2f} [{raw['ci95_boot'][0]:.2f}, "
                  f"{raw['ci95_boot'][1]:.2f}] | minus floor {exc['ratio']:.2f} [{exc['ci95_boot'][0]:.2f}, "
                  f"{exc['ci95_boot'][1]:.2f}]{gm} | better in {v['n_fast_better']}/{v['n_conditions']}")
            print(f"    {'':<32} -> {raw['verdict']}")


if __name__ == "__main__":
    main()

"""Stage-1 cost on this machine: matrix-form vs elementwise ZIP likelihood, and full training steps.

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_stage1.py`` (< 5 minutes on 2 cores).
Prints a table and writes ``benchmarks/results/stage1.json``. Every case runs in a fresh subprocess
so that its peak resident memory (``ru_maxrss`` above the post-import baseline) is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

B = 64  # cells per condition and step (METHOD.md default)
ELEMENTWISE_MAX_ELEMENTS = 1.5e8  # B·M·d above this the elementwise form would need > ~3 GB: skipped
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _likelihood_case(form: str, d: int, M: int, repeats: int) -> dict:
    """Seconds per forward + backward of the (B, M) log-likelihood, as in one stage-1 step."""
    import numpy as np
    import torch

    from lcd_core.module._noise import ZIPNoise

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    noise = ZIPNoise(rng.uniform(1, 5, d))
    y = torch.as_tensor(rng.poisson(2.0, (B, d)), dtype=torch.float32)
    s = torch.randn(M, d, requires_grad=True)
    base = _rss_mb()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        ll = noise.log_likelihood_matrix(y, s) if form == "matrix" else noise.log_likelihood(y[:, None], s[None])
        torch.logsumexp(ll, -1).sum().backward()
        times.append(time.perf_counter() - t)
        s.grad = None
    return {"seconds": min(times), "peak_mb": _rss_mb() - base}


def _step_case(generator: str, d: int, K: int, M: int, repeats: int) -> dict:
    """Seconds per full stage-1 step (all K conditions), measured from fit_stage1's own history."""
    import numpy as np
    import torch

    from lcd_core.train._stage1 import Stage1Config, fit_stage1

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    counts = [rng.poisson(3.0, (200, d)).astype(np.float64) for _ in range(K)]
    config = Stage1Config(generator=generator, n_samples=M, batch_size=B, steps=repeats + 1, warmup=1, log_every=1)
    base = _rss_mb()
    hist = fit_stage1(counts, np.full(d, 2.0), config).history
    per_step = np.diff([h["seconds"] for h in hist])  # skip the first step (allocations, warm-up)
    return {"seconds": float(np.median(per_step)), "peak_mb": _rss_mb() - base}


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = []
    t_start = time.perf_counter()
    for d in (100, 1000):
        for M in (1000, 20000):
            for form in ("matrix", "elementwise"):
                if form == "elementwise" and B * M * d > ELEMENTWISE_MAX_ELEMENTS:
                    rows.append({"bench": "likelihood", "form": form, "d": d, "M": M, "seconds": None, "peak_mb": None,
                                 "note": f"skipped: B*M*d = {B * M * d:.1e} floats per temporary"})
                    continue
                repeats = 2 if d * M >= 2e7 else 5
                r = _run_child(["likelihood", form, str(d), str(M), str(repeats)])
                rows.append({"bench": "likelihood", "form": form, "d": d, "M": M, **r})
    for d, K, M in ((100, 20, 1000), (100, 20, 2000), (120, 100, 500)):
        for gen in ("gaussian", "mlp"):
            r = _run_child(["step", gen, str(d), str(K), str(M), "3"])
            rows.append({"bench": "step", "generator": gen, "d": d, "K": K, "M": M, **r})

    print(f"\nStage-1 benchmark, B = {B}, torch threads = {THREADS}, forward + backward")
    print(f"{'bench':<11}{'variant':<13}{'d':>6}{'K':>5}{'M':>7}{'s/step':>10}{'peak MB':>10}")
    for r in rows:
        variant = r.get("form") or r.get("generator")
        sec = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
        mem = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        print(f"{r['bench']:<11}{variant:<13}{r['d']:>6}{r.get('K', 1):>5}{r['M']:>7}{sec:>10}{mem:>10}  {r.get('note', '')}")
    for d in (100, 1000):
        for M in (1000, 20000):
            m = [r for r in rows if r["bench"] == "likelihood" and r["d"] == d and r["M"] == M]
            if len(m) == 2 and m[1]["seconds"]:
                print(f"speed-up matrix vs elementwise, d={d}, M={M}: {m[1]['seconds'] / m[0]['seconds']:.1f}x")
    out = Path(__file__).parent / "results" / "stage1.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch_size": B, "threads": THREADS, "rows": rows,
                               "total_seconds": time.perf_counter() - t_start}, indent=1))
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        kind, *rest = sys.argv[2:]
        if kind == "likelihood":
            res = _likelihood_case(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            res = _step_case(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
        print(json.dumps(res))
    else:
        main()

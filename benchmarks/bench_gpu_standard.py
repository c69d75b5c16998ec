"""The ``standard`` preset on one GPU, through the local backend and through the Ray backend.

How long does ``lcd train --preset standard`` take on one GPU, and what does ``--backend ray`` add?
One screen, trained twice with the standard preset (METHOD.md §2; :func:`lcd_core.model.get_preset`):

1. ``local``: :class:`lcd_core.backends.LocalBackend` in this process (what ``lcd train`` runs);
2. ``ray``: :class:`lcd_core.backends.ray.RayBackend` against a Ray instance this script starts on this
   machine (``ray.init(num_gpus=1, include_dashboard=False)``, 127.0.0.1 only), ``transfer="ship"`` by
   default: the screen's bytes go to the worker and the finished run comes back as one tar, as for a
   remote GPU.

Both run the preset's shapes (stage 1: MLP generators, M = 4000 latent samples, B = 64, every condition
every step; stage 2: width 1024, embedding 1024, batch 8192; 10,000 latent samples per condition in
between) but only ``--stage1-steps`` / ``--stage2-steps`` optimiser steps (defaults 300 and 1000; warm-up
shortened to a tenth of them). The per-step time of a stage is the slope of its progress records (wall
clock of ``log.jsonl``, steady state: the first logged step is the origin, so CUDA start-up and the warm
start are not in it); the rest of a stage's wall time is its fixed cost (warm start, checkpoint, latent
sampling, standardisation, data to the GPU). The full preset's wall time (20,000 + 50,000 steps) is then
**extrapolated**, not measured::

    full = before start + fixed(stage 1) + 20,000 × per-step(stage 1)
           + fixed(stage 2) + 50,000 × per-step(stage 2) + after end

(periodic checkpoints of a long run, every 120 s, are not in it: a few seconds each). A stage is also
cut at a wall-time cap (``--stage-cap-s``, shrunk further when ``--budget-s`` would be exceeded): the
slope is then taken over the steps done, and the JSON says how many.

The screen: ``lcd_core.simulation`` linear generator with ZIP counts (``--genes`` 1000, ``--conditions``
150 = control + 149 singles, ``--cells`` 100 per condition; ~10 s on 16 cores), or ``--data PATH``.

Usage::

    python benchmarks/bench_gpu_standard.py --tag h200          # one CUDA GPU: <= 200 s on an H200, 16 cores
    python benchmarks/bench_gpu_standard.py --small             # CPU smoke test: < 2 min on 2 cores

On a bare GPU machine whose Python has torch but neither anndata nor ray (the lent H100/H200 ones):
``bash benchmarks/gpu_bundle.sh`` here first (writes the git-ignored ``.gpu_bundle/``, ~31 MB: the wheels
and a slimmed ray 2.60), carry ``.gpu_bundle`` along, and there, in the repository root::

    mkdir -p /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        .gpu_bundle/wheels/*.whl && tar -xJf .gpu_bundle/ray.tar.xz -C /tmp/site \
        && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/bench_gpu_standard.py --tag h200

``--small`` shrinks everything (d = 50, 20 conditions, M = 500, stage-2 width 256 and batch 1024, a few
steps) so that the script's path runs on a CPU; its numbers are not the standard preset's.

Writes ``benchmarks/results/gpu_standard[_TAG].json`` after every phase (a run cut short keeps what it
measured) and prints progress lines (flushed) and a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# before anything imports ray: the instance started here advertises and binds 127.0.0.1 only
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parents[1]
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke test (< 2 min on 2 cores); not the preset's shapes")
    p.add_argument("--device", help="cuda (default) or cpu (default with --small)")
    p.add_argument("--data", help="an .h5ad count screen instead of the simulated one")
    p.add_argument("--genes", type=int, help="simulated genes (default 1000; --small 50)")
    p.add_argument("--conditions", type=int, help="simulated conditions incl. control (default 150; --small 20)")
    p.add_argument("--cells", type=int, help="simulated cells per condition (default 100; --small 50)")
    p.add_argument("--stage1-steps", type=int, help="stage-1 steps timed (default 300; --small 20)")
    p.add_argument("--stage2-steps", type=int, help="stage-2 steps timed (default 1000; --small 40)")
    p.add_argument("--latent-samples", type=int, help="latent samples per condition between the stages "
                   "(default: the preset's 10000; --small 500)")
    p.add_argument("--stage-cap-s", type=float, help="wall-time cap of each stage's loop (default 40; --small 20)")
    p.add_argument("--budget-s", type=float, help="target wall time of the whole script; stage caps shrink to "
                   "keep to it (default 190; --small 110)")
    p.add_argument("--transfer", choices=["ship", "shared"], default="ship",
                   help="Ray backend: ship data and run through Ray (a remote GPU) or share paths (one machine)")
    p.add_argument("--ray-cpus-per-task", type=int,
                   help="CPUs (torch threads) of the Ray training task; default: all, as the local process has")
    p.add_argument("--only", choices=["local", "ray"], help="run one backend only")
    p.add_argument("--tag", help="results/gpu_standard_TAG.json (default: none; --small: cpu_small)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    small = a.small
    defaults = dict(device="cpu" if small else "cuda", genes=50 if small else 1000, conditions=20 if small else 150,
                    cells=50 if small else 100, stage1_steps=20 if small else 300,
                    stage2_steps=40 if small else 1000, stage_cap_s=20.0 if small else 40.0,
                    budget_s=110.0 if small else 190.0, tag="cpu_small" if small else None)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def bench_config(a: argparse.Namespace):
    """The standard preset, truncated to the timed step counts (and shrunk with --small)."""
    from lcd_core.model import get_preset

    cfg = get_preset("standard", seed=a.seed)
    cfg.stage1.steps = a.stage1_steps
    cfg.stage1.warmup = min(cfg.stage1.warmup, max(1, a.stage1_steps // 10))
    cfg.stage1.log_every = max(1, min(10, a.stage1_steps // 10))
    cfg.stage2.steps = a.stage2_steps
    cfg.stage2.warmup_steps = min(cfg.stage2.warmup_steps, a.stage2_steps // 10)
    cfg.stage2.log_every = max(1, min(50, a.stage2_steps // 10))
    if a.latent_samples:
        cfg.n_latent_samples = a.latent_samples
    if a.small:
        cfg.stage1.n_samples, cfg.stage1.gene_hidden = 500, 64
        cfg.stage2.hidden, cfg.stage2.emb_dim, cfg.stage2.batch_size = 256, 256, 1024
        cfg.n_latent_samples = a.latent_samples or 500
    return cfg


def make_screen(a: argparse.Namespace, folder: Path) -> tuple[Path, dict]:
    if a.data:
        from lcd_core.data import read_screen

        s = read_screen(a.data)
        return Path(a.data), {"source": str(a.data), "genes": len(s.genes), "conditions": len(s.conditions),
                              "cells": int(sum(s.n_cells.values()))}
    from lcd_core.simulation import simulate

    t = time.perf_counter()
    adata = simulate("linear", n_genes=a.genes, n_perturbed=a.conditions - 1, n_cells=a.cells, seed=a.seed,
                     counts=True, store_latent=False, counts_layer=False)
    seconds = time.perf_counter() - t
    path = folder / "screen.h5ad"
    adata.write_h5ad(path)
    return path, {"source": "simulate('linear', counts=True)", "genes": a.genes, "conditions": a.conditions,
                  "cells_per_condition": a.cells, "cells": int(adata.n_obs), "generation_seconds": seconds,
                  "file_mb": path.stat().st_size / 1e6}


def timing_from_log(run: Path, t_submit: float, t_return: float) -> dict:
    """Per-stage wall, per-step and fixed seconds from the run's ``log.jsonl`` (wall clock, this machine)."""
    from lcd_core.model import RunDir

    log = RunDir(run).read_log()
    t_start = next(r["time"] for r in log if r.get("event") == "start")
    done = {r["stage"]: r for r in log if r.get("event") == "stage_done"}
    t_complete = next(r["time"] for r in log if r.get("event") == "complete")
    out = {"client_wall_s": t_return - t_submit, "before_start_s": t_start - t_submit,
           "after_end_s": t_return - t_complete}
    t_prev = t_start
    for stage in ("stage1", "stage2"):
        recs = [(r["step"], r["time"]) for r in log if r.get("event") == "progress" and r.get("stage") == stage]
        t_end = done[stage]["time"]
        wall = t_end - t_prev
        (s0, t0), (s1, t1) = recs[0], recs[-1]
        per_step = (t1 - t0) / (s1 - s0) if s1 > s0 else float("nan")
        out[stage] = {"wall_s": wall, "steps_done": s1, "finished_all_steps": done[stage]["finished_all_steps"],
                      "per_step_s": per_step, "fixed_s": wall - s1 * per_step, "records": len(recs)}
        t_prev = t_end
    out["finish_s"] = t_complete - t_prev  # model save after stage 2
    # what a shipped run brings back (checkpoints included: the stage-1 one holds every generator + Adam)
    out["run_dir_mb"] = sum(f.stat().st_size for f in Path(run).rglob("*") if f.is_file()) / 1e6
    return out


def extrapolate(t: dict, full_steps: dict) -> float:
    return (t["before_start_s"] + t["finish_s"] + t["after_end_s"]
            + sum(t[s]["fixed_s"] + full_steps[s] * t[s]["per_step_s"] for s in ("stage1", "stage2")))


def stage_cap(remaining: float, overhead: float, a: argparse.Namespace) -> float:
    """Each stage's loop gets at most half of what the budget leaves after the fixed costs."""
    return max(3.0 if a.small else 8.0, min(a.stage_cap_s, (remaining - overhead) / 2))


def run_one(name: str, backend, screen: Path, out: Path, cfg, device: str, cap: float) -> dict:
    shown = {}

    def progress(p):  # a lcd_core.train.Progress
        stage, step, total, record = p.stage, p.step, p.total, p.record
        # about ten lines per stage
        every = max(1, total // 10)
        if step // every != shown.get(stage, -1) or step == total:
            shown[stage] = step // every
            say(f"  [{name}] {stage} {step}/{total} loss {record.get('loss', float('nan')):.5g}")

    say(f"{name}: training (stage cap {cap:.0f} s)")
    t_submit = time.time()
    backend.train(screen, out, config=cfg, device=device, progress=progress, max_seconds_per_stage=cap)
    t_return = time.time()
    t = timing_from_log(out, t_submit, t_return)
    t["stage_cap_s"] = cap
    say(f"{name}: done in {t['client_wall_s']:.1f} s (stage 1 {t['stage1']['wall_s']:.1f} s, "
        f"{t['stage1']['per_step_s'] * 1e3:.1f} ms/step; stage 2 {t['stage2']['wall_s']:.1f} s, "
        f"{t['stage2']['per_step_s'] * 1e3:.1f} ms/step)")
    return t


def print_table(res: dict) -> None:
    rows = res["backends"]
    names = [n for n in ("local", "ray") if n in rows]

    def line(label, fn, fmt="{:>12.2f}", ratio=True):
        vals = [fn(rows[n]) for n in names]
        cells = "".join(fmt.format(v) for v in vals)
        r = f"{vals[1] / vals[0]:>10.2f}x" if ratio and len(vals) == 2 and vals[0] else ""
        print(f"{label:<38}{cells}{r}")

    print()
    print(f"{'':<38}" + "".join(f"{n:>12}" for n in names) + (f"{'ray/local':>11}" if len(names) == 2 else ""))
    line("client wall (s)", lambda t: t["client_wall_s"])
    line("  before start (read; Ray: ship, task)", lambda t: t["before_start_s"])
    for s, label in (("stage1", "stage 1"), ("stage2", "stage 2 (incl. latent sampling)")):
        line(f"{label} wall (s)", lambda t, s=s: t[s]["wall_s"])
        line("  steps done", lambda t, s=s: t[s]["steps_done"], "{:>12.0f}", ratio=False)
        line("  per step (ms)", lambda t, s=s: t[s]["per_step_s"] * 1e3)
        line("  fixed (s)", lambda t, s=s: t[s]["fixed_s"])
    line("  model save (s)", lambda t: t["finish_s"])
    line("  after end (Ray: run back, unpack) (s)", lambda t: t["after_end_s"])
    line("  run directory (MB)", lambda t: t["run_dir_mb"], "{:>12.1f}", ratio=False)
    line("full preset, EXTRAPOLATED (h)", lambda t: t["extrapolated_full_preset_h"], "{:>12.3f}")
    fs = res["config"]["full_preset_steps"]
    print(f"\nThe last row is an extrapolation to the full preset ({fs['stage1']} + {fs['stage2']} steps) from the "
          "measured per-step and fixed times, not a measurement.")
    if res.get("small"):
        print("--small: shrunk shapes on a CPU; a smoke test of this script, not the standard preset's numbers.")


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from lcd_core.backends import LocalBackend, get_backend
    from lcd_core.model import get_preset

    deadline = T0 + a.budget_s
    gpu = a.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --small (CPU smoke test) or on a GPU machine", file=sys.stderr)
        return 2
    name = f"gpu_standard_{a.tag}.json" if a.tag else "gpu_standard.json"
    results_path = ROOT / "benchmarks" / "results" / name
    results_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = bench_config(a)
    full = get_preset("standard")
    res: dict = {
        "what": "standard preset, local vs Ray backend, truncated steps; full preset wall time EXTRAPOLATED "
                "from per-step times (not measured)",
        "small": a.small,
        "machine": {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "cpus": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)},
        "config": {"preset": "standard", "device": a.device, "train_config": cfg.to_dict(),
                   "full_preset_steps": {"stage1": full.stage1.steps, "stage2": full.stage2.steps},
                   "transfer": a.transfer, "budget_s": a.budget_s, "stage_cap_s": a.stage_cap_s},
        "backends": {},
    }

    def write():
        res["script_wall_s"] = time.monotonic() - T0
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str))
        os.replace(tmp, results_path)

    say(f"bench_gpu_standard: device {res['machine']['device']}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"steps {a.stage1_steps} + {a.stage2_steps} (full preset {full.stage1.steps} + {full.stage2.steps}), "
        f"budget {a.budget_s:.0f} s")
    folder = Path(tempfile.mkdtemp(prefix="lcd-bench-gpu-"))
    try:
        screen, info = make_screen(a, folder)
        res["screen"] = info
        say(f"screen: {info}")
        write()
        cpus = os.cpu_count() or 1
        ray_extra = 10.0 if a.small else 25.0  # Ray start, worker start, run shipped back (a guess, then measured)
        fixed_guess = 10.0 if a.small else 40.0
        if a.only != "ray":
            remaining = deadline - time.monotonic()
            share = remaining / 2 if a.only is None else remaining
            cap = stage_cap(share - (ray_extra if a.only is None else 0) / 2, fixed_guess, a)
            t = run_one("local", LocalBackend(), screen, folder / "local", cfg, a.device, cap)
            res["backends"]["local"] = t
            fixed_guess = t["client_wall_s"] - sum(t[s]["steps_done"] * t[s]["per_step_s"]
                                                   for s in ("stage1", "stage2"))
            gc.collect()
            if gpu:
                res["backends"]["local"]["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
                torch.cuda.empty_cache()
            write()
        if a.only != "local":
            import ray

            say("starting a local Ray instance (127.0.0.1)")
            t = time.perf_counter()
            try:
                ray.init(address="local", num_cpus=cpus, num_gpus=1 if gpu else 0, include_dashboard=False,
                         log_to_driver=False, logging_level="WARNING")
                res["ray_start_s"] = time.perf_counter() - t
                backend = get_backend("ray", transfer=a.transfer, cpus_per_task=a.ray_cpus_per_task or cpus)
                res["config"]["ray_cpus_per_task"] = backend.cpus_per_task
                say(f"Ray up in {res['ray_start_s']:.1f} s: {ray.cluster_resources()}")
                cap = stage_cap(deadline - time.monotonic() - 3, fixed_guess + ray_extra, a)
                res["backends"]["ray"] = run_one("ray", backend, screen, folder / "ray", cfg, a.device, cap)
            except Exception as e:  # keep the local numbers; say what failed
                res["ray_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
                say(f"Ray run failed: {res['ray_error']}")
            finally:
                if ray.is_initialized():
                    ray.shutdown()
            write()
        for t in res["backends"].values():
            t["extrapolated_full_preset_s"] = extrapolate(t, res["config"]["full_preset_steps"])
            t["extrapolated_full_preset_h"] = t["extrapolated_full_preset_s"] / 3600
        if len(res["backends"]) == 2:
            lo, ry = res["backends"]["local"], res["backends"]["ray"]
            res["ray_over_local"] = {
                "client_wall": ry["client_wall_s"] / lo["client_wall_s"],
                **{f"{s}_per_step": ry[s]["per_step_s"] / lo[s]["per_step_s"] for s in ("stage1", "stage2")},
                "extrapolated_full_preset": ry["extrapolated_full_preset_s"] / lo["extrapolated_full_preset_s"]}
        write()
        if res["backends"]:
            print_table(res)
        say(f"wrote {results_path.relative_to(ROOT)}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

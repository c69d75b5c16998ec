"""Benchmark: the Streamlit app on the demo, in a real headless Chromium.

Measures, on this machine:
- time to first render of Home on a cold start (process start → "Model ready" visible);
- time to render each page warm (second visit, its content visible, no background job pending);
- the first Perturb visit on a cold server (loads the run's saved reference UMAP; before issue 14 it was
  fitted here, once per server);
- latency from choosing a new double on Perturb to the updated UMAP (target ≤ 2 s);
- memory (RSS now and peak) of the server process.

    .venv/bin/python benchmarks/bench_app.py [--doubles 5] [--chromium /usr/bin/chromium] [--cold-perturb-only]

Uses the shipped demo run (assets/demo_run) or, when LCD_APP_DEMO_RUN is set, that run.
Writes ``benchmarks/results/app.json`` and prints a table. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = [("Perturb", "Perturb", "generated cells of"), ("Causal_graph", "Causal graph", "edges above threshold"),
         ("Modules", "Modules", "Graph (GraphML"), ("Train", "Train", "New training"),
         ("Benchmark", "Benchmark", "held-out conditions")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) / 1024
    return {"rss_mb": round(out.get("VmRSS", 0), 1), "peak_rss_mb": round(out.get("VmHWM", 0), 1)}


#: the app's script is running (the app root's attribute; the toolbar's status widget is not a signal: with
#: ``toolbarMode = "minimal"`` it is never drawn, and it shows only after 0.5 s of running anyway)
RUNNING = '[data-testid="stApp"][data-test-script-state="running"]'


def settled(page, timeout_s: float = 120) -> None:
    """Wait until the script has finished and the page shows no pending background job."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if page.locator(RUNNING).count() == 0 and page.get_by_text("working in the background").count() == 0:
            return
        page.wait_for_timeout(50)
    raise TimeoutError("page did not settle")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doubles", type=int, default=5, help="doubles to time on Perturb")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--cold-perturb-only", action="store_true",
                    help="only Home cold and the first Perturb visit (writes results/app_cold_perturb.json)")
    ap.add_argument("--home-pause", type=float, default=0.0,
                    help="seconds spent on Home before the first click (a reader's pause; 0: click at once)")
    args = ap.parse_args()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", LCD_APP_RUNS=str(tmp / "runs"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t_start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT)
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
                 "demo_run": os.environ.get("LCD_APP_DEMO_RUN", "assets/demo_run")}
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
            if time.monotonic() - t_start > 180:
                raise TimeoutError("server did not start")
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=args.chromium,
                                                        headless=True, args=ARGS, viewport={"width": 1400, "height": 2400})
            # a step that takes 5 minutes is a hang, not a measurement: fail with a screenshot of the page
            ctx.set_default_timeout(300_000)
            page = ctx.new_page()
            try:
                page.goto(url)
                page.get_by_text("Model ready").wait_for()
                settled(page)
                res["home_cold_s"] = round(time.monotonic() - t_start, 2)
                res["home_pause_s"] = args.home_pause
                time.sleep(args.home_pause)  # Home starts sampling what Perturb shows first (app_ui.results.warm_perturb)

                def visit(path: str, title: str, marker: str) -> float:
                    t0 = time.monotonic()
                    page.locator('[data-testid="stSidebar"] a').filter(has_text=title).first.click()
                    page.wait_for_url(f"**/{path}")
                    page.get_by_text(marker, exact=False).first.wait_for()
                    settled(page)
                    if title not in ("Train",):
                        page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for()
                    return round(time.monotonic() - t0, 2)

                first = {}
                for path, title, marker in PAGES:  # first visits: pay CLIPR, evaluation once
                    first[title] = visit(path, title, marker)
                    if args.cold_perturb_only:
                        break
                res["first_visit_s"] = first
                if args.cold_perturb_only:
                    res["server_memory"] = rss_mb(proc.pid)
                    ctx.close()
                    return _finish(res, HERE / "results" / "app_cold_perturb.json")
                t0 = time.monotonic()
                page.locator('[data-testid="stSidebar"] a').filter(has_text="Home").first.click()
                page.get_by_text("Model ready").wait_for()
                settled(page)
                warm = {"Home": round(time.monotonic() - t0, 2)}
                for path, title, marker in PAGES:
                    warm[title] = visit(path, title, marker)
                res["warm_page_s"] = warm

                # Perturb: choose a new double → updated UMAP
                visit("Perturb", "Perturb", "generated cells of")
                lat, full, retried = [], [], []
                for i in range(args.doubles):
                    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Double").first
                    box.locator('[role="combobox"]').click()
                    opt = page.locator('[role="option"]').nth(i + 1)
                    label = opt.inner_text().split()[0]
                    t0 = time.monotonic()
                    opt.click()
                    # now and then (2 of 4 runs without this retry) the click on the option is lost: the list stays
                    # open and no rerun starts (failure.png). A user clicks again: so does this, timed from the
                    # second click
                    try:
                        page.locator('[role="listbox"]').wait_for(state="hidden", timeout=3000)
                    except PlaywrightTimeout:
                        retried.append(label)
                        t0 = time.monotonic()
                        page.locator('[role="option"]').filter(has_text=label).first.click()
                    page.locator('[data-testid="stMarkdownContainer"]').filter(
                        has_text=f"generated cells of {label}").first.wait_for()
                    page.locator('[data-testid="stPlotlyChart"]').filter(has_text=f"{label} (predicted)").first.wait_for()
                    lat.append(round(time.monotonic() - t0, 3))
                    settled(page)  # the rest of the page (interaction class, metrics, baselines)
                    full.append(round(time.monotonic() - t0, 3))
                res["double_to_umap_s"] = {"each": lat, "median": statistics.median(lat), "max": max(lat),
                                           "target": 2.0}
                res["double_to_full_page_s"] = {"each": full, "median": statistics.median(full), "max": max(full)}
                res["lost_clicks_retried"] = retried
                res["server_memory"] = rss_mb(proc.pid)
                ctx.close()
            except Exception:
                shot = tmp / "failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"bench_app: failed; the page is in {shot}, the server's log in {tmp / 'server.log'}",
                      file=sys.stderr)
                raise
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    _finish(res, HERE / "results" / "app.json")


def _finish(res: dict, out: Path) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"{'measure':<42}{'seconds / MB':>14}")
    print(f"{'Home, cold start (process → rendered)':<42}{res['home_cold_s']:>14}")
    for k, v in res["first_visit_s"].items():
        print(f"{'first visit: ' + k:<42}{v:>14}")
    for k, v in res.get("warm_page_s", {}).items():
        print(f"{'warm: ' + k:<42}{v:>14}")
    if "double_to_umap_s" in res:
        d = res["double_to_umap_s"]
        print(f"{'new double → updated UMAP (median)':<42}{d['median']:>14}")
        print(f"{'new double → updated UMAP (max)':<42}{d['max']:>14}")
        f = res["double_to_full_page_s"]
        print(f"{'new double → whole page settled (median)':<42}{f['median']:>14}")
    print(f"{'server RSS now / peak (MB)':<42}{res['server_memory']['rss_mb']:>7} / {res['server_memory']['peak_rss_mb']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The Streamlit app, page by page, with Streamlit's AppTest: widgets drive the outputs.

A small simulated screen (with its truth) and a model trained on it in seconds stand in for the demo,
through the app's settings (LCD_APP_* environment variables). The reference embedding uses its PCA
mode here (no numba compile); the UMAP path is covered by tests/test_browser.py and the benchmark.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config

from lcd_core import LCDError

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = streamlit_testing.AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["pages/1_Perturb.py", "pages/2_Causal_graph.py", "pages/3_Modules.py", "pages/4_Train.py",
         "pages/5_Benchmark.py"]


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """A simulated screen with truth, two held-out doubles, and a finished tiny run; env pointing at them."""
    from lcd_core import KEYS
    from lcd_core.data import read_screen
    from lcd_core.model import train
    from lcd_core.simulation import simulate_nonlinear

    d = tmp_path_factory.mktemp("app")
    adata = simulate_nonlinear(20, n_modules=2, n_singles=8, n_doubles=5, n_cells=50, seed=1)
    doubles = sorted(c for c in adata.obs[KEYS.PERT].unique() if "+" in c)
    adata.uns[KEYS.SPLIT] = {"heldout": np.array(doubles[:2])}
    screen_path = d / "screen.h5ad"
    adata.write_h5ad(screen_path)
    run = d / "run"
    cfg = tiny_config()
    cfg.min_cells = 10
    train(read_screen(screen_path), run, config=cfg, device="cpu")
    # the tiny run stands in for the demo run; the shipped real run is left out (tests/test_app_real.py)
    env = {"LCD_APP_DEMO_SCREEN": str(screen_path), "LCD_APP_DEMO_RUN": str(run),
           "LCD_APP_REAL_RUN": str(d / "no-real-run"),
           "LCD_APP_RUNS": str(d / "runs"), "LCD_APP_EMBEDDING": "pca"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"screen": screen_path, "run": run, "doubles": doubles, "dir": d}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def settle(at: AppTest, timeout: float = 60.0) -> AppTest:
    """Rerun while a background job is still working (a real browser polls; AppTest does not)."""
    t0 = time.monotonic()
    while any("working in the background" in i.value for i in at.info) and time.monotonic() - t0 < timeout:
        time.sleep(0.3)
        at.run()
    return at


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    return settle(at)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def find_df(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe on the page with ``column`` (AppTest does not expose dataframe keys)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def download(at: AppTest, key: str, capture: dict) -> bytes:
    """Bytes of a download button: the payload Streamlit stored for it (captured at upload time)."""
    el = next(e for e in at.get("download_button") if e.proto.id.endswith(f"-{key}"))
    if el.proto.HasField("deferred_file_id"):  # written when clicked: run its callable as the click would
        return capture[el.proto.deferred_file_id]()
    return capture[Path(el.proto.url).stem]


@pytest.fixture
def capture_media(monkeypatch):
    """Record what download buttons hand to Streamlit's in-memory media store (file id → bytes), and the
    functions of deferred downloads, written when clicked (file id → function)."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    seen: dict = {}
    original = MemoryMediaFileStorage.load_and_get_id
    original_deferred = MediaFileManager.add_deferred

    def spy(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        seen[file_id] = path_or_data if isinstance(path_or_data, bytes) else Path(path_or_data).read_bytes()
        return file_id

    def spy_deferred(self, fn, *args, **kwargs):
        file_id = original_deferred(self, fn, *args, **kwargs)
        seen[file_id] = fn
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    monkeypatch.setattr(MediaFileManager, "add_deferred", spy_deferred)
    return seen


def test_home_opens_on_demo_with_model(app_env):
    at = open_page()
    assert_clean(at)
    assert at.title[0].value == "LCD Explorer"
    assert any("Model ready" in s.value for s in at.success)
    assert metric(at, "singles") == "8"
    assert any("simulated" in i.value for i in at.info)
    # Home's warm-up queued what Perturb shows first: the default double's cells, then the baselines
    from app_ui.jobs import jobs

    warm = jobs("resources").get(next(k for k in jobs("resources").keys() if k[0] == "training_reference"))
    assert warm.wait(120) and warm.error is None and "additive" in warm.result[1]


def _fit_text(at: AppTest) -> list[str]:
    return [m.value for m in [*at.success, *at.info] if "Fit check" in m.value]


def test_home_says_how_well_the_run_reproduces_its_training_conditions(app_env):
    from lcd_core.model import read_fit

    fit = read_fit(app_env["run"])
    at = open_page()
    assert_clean(at)
    text = _fit_text(at)
    assert len(text) == 1 and fit["summary"]["sentence"] in text[0]
    assert f"reproduces {fit['summary']['n_within']} of {fit['summary']['n_judged']}" in text[0]
    # an older run without fit.json: no sentence, no error
    path = Path(app_env["run"]) / "fit.json"
    saved = path.read_bytes()
    path.unlink()
    try:
        at = open_page()
        assert_clean(at)
        assert not _fit_text(at) and any("Model ready" in s.value for s in at.success)
    finally:
        path.write_bytes(saved)


def chart(at: AppTest, key: str) -> dict:
    """The figure (plotly JSON) of the chart drawn with ``key``."""
    import json

    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert len(charts) == 1, (key, [c.proto.id for c in at.get("plotly_chart")])
    return json.loads(charts[0].proto.spec)


def n_values(v) -> int:
    """Number of values of a plotly array, plain or binary-encoded ({"dtype", "bdata"[, "shape"]})."""
    import base64

    if isinstance(v, dict):
        if "shape" in v:
            return int(np.prod([int(n) for n in str(v["shape"]).split(",")]))
        return len(base64.b64decode(v["bdata"])) // np.dtype(v["dtype"]).itemsize
    return len(v or [])


def test_every_page_renders_its_main_content(app_env):
    from lcd_core.data import read_screen

    genes = read_screen(app_env["screen"]).genes
    at = open_page(PAGES[0])  # Perturb: the embedding with the reference cells and the generated ones
    assert_clean(at)
    traces = [t for t in chart(at, "umap_chart")["data"] if n_values(t.get("x"))]
    assert len(traces) >= 2 and any("(predicted)" in (t.get("name") or "") for t in traces), [t.get("name") for t in traces]
    assert len(find_df(at, "gene")) > 0  # the per-gene shift table
    at = open_page(PAGES[1])  # Causal graph: the chosen gene's network and the edge table
    assert_clean(at)
    fig = chart(at, "ego_chart")
    assert sum(n_values(t.get("x")) for t in fig["data"]) > 1
    edges = find_df(at, "source")
    assert len(edges) > 0 and set(edges["source"]) <= set(genes)
    at = open_page(PAGES[2])  # Modules: the reordered effect heatmap and the module table
    assert_clean(at)
    heat = next(t for t in chart(at, "heatmap")["data"] if t.get("type") == "heatmap")
    assert n_values(heat["z"]) == len(genes) ** 2
    modules = find_df(at, "module")
    assert len(modules) > 0
    at = open_page(PAGES[3])  # Train: the form that starts a training
    assert_clean(at)
    assert at.text_input(key="tr_name") is not None and at.button(key="tr_start") is not None
    at = settle(open_page(PAGES[4]), 120)  # Benchmark: the per-condition table of the held-out doubles
    assert_clean(at)
    per = find_df(at, "condition")
    assert set(per["condition"]) == set(app_env["doubles"][:2])


def test_perturb_double_drives_prediction_table_and_gi(app_env):
    at = open_page(PAGES[0])
    assert_clean(at)
    a, b = app_env["doubles"][0], app_env["doubles"][2]
    at.selectbox(key="pert_double").select(a).run()
    settle(at)
    assert_clean(at)
    assert any(a in m.value for m in at.markdown if "generated cells" in m.value)
    tables1 = {"shift_table": find_df(at, "predicted_shift"), "gi_table": find_df(at, "classes")}
    assert chart(at, "umap_chart")["data"]
    at.selectbox(key="pert_double").select(b).run()
    settle(at)
    assert_clean(at)
    assert any(b in m.value for m in at.markdown if "generated cells" in m.value)
    tables2 = {"shift_table": find_df(at, "predicted_shift"), "gi_table": find_df(at, "classes"),
               "metrics_table": find_df(at, "mmd")}
    assert not tables1["shift_table"].equals(tables2["shift_table"])
    assert not tables1["gi_table"].equals(tables2["gi_table"])
    assert set(tables2["gi_table"]["source"]) == {"LCD prediction", "observed cells"}
    # the held-out double's measured cells are on the embedding beside the predicted ones, one point each
    import base64
    import json

    fig = chart(at, "umap_chart")
    traces = {t.get("name"): t for t in fig["data"]}
    assert f"{b} (predicted)" in traces and f"{b} (observed)" in traces
    import anndata as ad

    from lcd_core import KEYS

    n_obs = int((ad.read_h5ad(app_env["screen"]).obs[KEYS.PERT].astype(str) == b).sum())
    x = traces[f"{b} (observed)"]["x"]  # plotly ships arrays as base64 ("bdata") or as lists
    n_points = len(np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])) if isinstance(x, dict) else len(x)
    assert n_points == n_obs > 0
    # (a prediction the no-change check flags keeps its class, marked "(class: not reproduced)")
    assert tables2["gi_table"]["class"].iloc[0].strip("()").split(":")[0] in {"additive", "synergy", "suppression", "neomorphism",
                                                   "epistasis", "redundancy"}
    # observed cells exist for a held-out double: LCD and the baselines are scored side by side
    methods = set(tables2["metrics_table"]["method"])
    assert {"lcd", "control", "additive"} <= methods
    assert {"additive_shift", "linear_shift"} <= set(tables2["shift_table"].columns)
    # the sampler budget is a real setting: other cells, scored again
    at.select_slider(key="pert_evals").set_value(16).run()
    settle(at)
    assert_clean(at)
    lcd16 = find_df(at, "mmd").set_index("method").loc["lcd"]
    assert not lcd16.equals(tables2["metrics_table"].set_index("method").loc["lcd"])


def test_perturb_any_gene_set_and_whatif(app_env):
    at = open_page(PAGES[0])
    at.radio(key="pert_kind").set_value("any gene set").run()
    genes = at.multiselect(key="pert_set").options
    at.multiselect(key="pert_set").select(genes[0]).select(genes[-1]).run()
    settle(at)
    assert_clean(at)
    assert any("generated cells" in m.value for m in at.markdown)
    at.radio(key="pert_mode").set_value("Linear what-if (CLIPR)").run()
    settle(at, 120)
    assert_clean(at)
    t_down = find_df(at, "latent_shift_sd")
    at.slider(key="wi_strength").set_value(4.0).run()
    settle(at)
    t_up = find_df(at, "latent_shift_sd")
    assert not t_down.equals(t_up)


def test_causal_graph_threshold_changes_edges_and_download(app_env, capture_media):
    at = open_page(PAGES[1])
    assert_clean(at)
    n1 = int(metric(at, "edges above threshold"))
    slider = at.select_slider(key="cg_top_k")
    assert n1 == slider.value  # the control is a number of edges, not a raw |effect|
    slider.set_value(200).run()
    n2 = int(metric(at, "edges above threshold"))
    assert n2 == 200 > n1
    assert "sign AUROC" in [m.label for m in at.metric]  # truth overlay on a simulated screen
    at.run()  # media of the last run is what the buttons point to
    data = download(at, "dl_edges", capture_media)
    table = pd.read_csv(io.BytesIO(data))  # a plain table: header first, no comment line
    assert list(table.columns[:3]) == ["source", "target", "effect"]
    assert len(table) == n2
    prov = json.loads(download(at, "dl_edges_prov", capture_media))  # its provenance: the second download
    assert prov["variant"] == "directed" and prov["data_hash"] and prov["top_k"] == slider.value == 200
    assert (table["effect"].abs() >= prov["threshold"]).all()  # the threshold recorded is the top-k cut
    # the paper variant is another estimate
    at.radio(key="cg_variant").set_value("paper").run()
    settle(at, 120)
    assert_clean(at)


def test_modules_cut_height_changes_module_count_and_downloads(app_env, capture_media):
    at = open_page(PAGES[2])
    assert_clean(at)
    counts = set()
    for r in (0.2, 2.5):  # the default clustering: Louvain resolution
        at.slider(key="mod_resolution").set_value(r).run()
        assert_clean(at)
        counts.add(int(metric(at, "modules")))
    assert len(counts) > 1, counts
    counts = set()
    at.radio(key="mod_method").set_value("hierarchical").run()
    for cut in (0.02, 0.3, 0.6):
        at.slider(key="mod_cut").set_value(cut).run()
        assert_clean(at)
        counts.add(int(metric(at, "modules")))
    at.number_input(key="mod_min_size").set_value(2).run()
    for cut in (0.1, 0.45):
        at.slider(key="mod_cut").set_value(cut).run()
        counts.add(int(metric(at, "modules")))
    assert len(counts) > 1, counts
    tsv = pd.read_table(io.BytesIO(download(at, "dl_modules", capture_media)))
    assert list(tsv.columns) == ["gene", "module", "is_hub", "top_terms"]
    import networkx as nx

    g = nx.read_graphml(io.BytesIO(download(at, "dl_graphml", capture_media)))
    assert g.number_of_nodes() == 20 and "data_hash" in g.graph


#: every download button of the pages, by key: what its bytes are and the columns a table starts with
DOWNLOADS = {"dl_shifts": ("csv", "gene"), "dl_whatif": ("csv", "gene"), "dl_edges": ("csv", "source"),
             "dl_modules": ("tsv", "gene"), "dl_effects": ("csv", "source"), "dl_graphml": ("graphml", None),
             "dl_cg_graphml": ("graphml", None),
             "dl_bm_per": ("csv", "method"), "dl_bm_summary": ("csv", "metric"), "dl_h5ad": ("h5ad", None)}


def test_every_download_opens_with_a_plain_reader_and_has_its_provenance(app_env, capture_media):
    """Issue 14.9: tables are header-first (pandas.read_csv / read_table with no options, as R's read.csv
    and Excel), and each group of tables has its provenance as a JSON download beside it."""
    import networkx as nx

    def pages():
        at = open_page(PAGES[0])
        yield at
        at.radio(key="pert_mode").set_value("Linear what-if (CLIPR)").run()
        yield settle(at, 120)
        yield settle(open_page(PAGES[1]), 120)
        yield settle(open_page(PAGES[2]), 120)
        yield settle(open_page(PAGES[4]), 120)

    seen = set()
    for at in pages():
        assert_clean(at)
        for el in at.get("download_button"):
            key = el.proto.id.rsplit("-", 1)[1]
            data = download(at, key, capture_media)
            seen.add(key)
            if key.endswith("_prov"):
                prov = json.loads(data)
                assert prov["data_hash"] and prov["version"] and prov["run"], (key, prov)
                continue
            assert key in DOWNLOADS, f"a new download {key!r}: add it to DOWNLOADS with its format"
            kind, first = DOWNLOADS[key]
            if kind == "graphml":
                assert "data_hash" in nx.read_graphml(io.BytesIO(data)).graph
                continue
            if kind == "h5ad":  # predicted cells: their provenance (run, seed) is inside the file
                import anndata as ad

                assert ad.read_h5ad(io.BytesIO(data)).uns["lcd_prediction"]["run"], key
                continue
            table = (pd.read_csv if kind == "csv" else pd.read_table)(io.BytesIO(data))
            assert table.columns[0] == first and len(table) > 0, (key, list(table.columns))
    assert seen >= set(DOWNLOADS), set(DOWNLOADS) - seen
    assert {"dl_shifts_prov", "dl_whatif_prov", "dl_edges_prov", "dl_modules_prov", "dl_bm_prov"} <= seen


def test_benchmark_table(app_env):
    at = open_page(PAGES[4])
    settle(at, 120)
    assert_clean(at)
    per = next(d.value for d in at.dataframe if len(d.value) and "condition" in d.value.columns)
    assert set(per["condition"]) == set(app_env["doubles"][:2])
    assert {"lcd", "control", "pooled", "additive", "linear"} <= set(per["method"])
    assert len(at.get("plotly_chart")) == 1
    # replicate-calibrated scores beside the raw means: each baseline scores 0 against itself
    summ = find_df(at, "calibrated_vs_additive")
    assert {"mean", "calibrated_vs_additive", "calibrated_vs_pooled"} <= set(summ.columns)
    rows = summ.set_index(["metric", "method"])
    assert float(rows.loc[("rmse_top20", "additive"), "calibrated_vs_additive"]) == 0.0
    assert float(rows.loc[("rmse_top20", "pooled"), "calibrated_vs_pooled"]) == 0.0
    assert np.isfinite(float(rows.loc[("rmse_top20", "lcd"), "calibrated_vs_additive"]))
    assert any("as good as repeating the experiment" in c.value for c in at.caption)
    # no "None" cells: undefined values read "–" (LCD's win rate against itself)
    assert not summ.isna().any().any() and rows.loc[("mmd", "lcd"), "win_rate"] == "–"
    assert set(summ["better"]) == {"lower", "higher"}
    # each metric says what it measures and which direction is better
    legend = next(d.value for d in at.dataframe if "measures" in d.value.columns)
    assert legend.set_index("metric").loc["mmd", "better"] == "lower"
    assert legend.set_index("metric").loc["pearson_delta", "better"] == "higher"
    assert any("lower is better" in c.value for c in at.caption)


def test_train_page_starts_follows_and_lists_run(app_env):
    at = open_page(PAGES[3])
    assert_clean(at)
    at.text_input(key="tr_name").input("tiny").run()
    overrides = ("stage1.steps=20\nstage1.n_samples=64\nstage2.steps=40\nstage2.hidden=32\nstage2.emb_dim=8\n"
                 "stage2.batch_size=128\nn_latent_samples=100\nmin_cells=10\ncheckpoint_seconds=1.0\nembedding=pca")
    at.text_area(key="tr_overrides").input(overrides).run()
    at.button(key="tr_start").click().run()
    assert_clean(at)
    assert any("Started" in s.value for s in at.success)
    out = app_env["dir"] / "runs" / "tiny"
    t0 = time.monotonic()
    while not (out / "COMPLETE").exists() and time.monotonic() - t0 < 240:
        time.sleep(1)
    assert (out / "COMPLETE").exists(), (app_env["dir"] / "runs" / ".jobs" / "tiny.log").read_text()[-2000:]
    at.run()
    assert any("Finished" in s.value for s in at.success), ([s.value for s in at.success], [m.value for m in at.markdown])
    # the finished run is in the picker
    assert "tiny" in at.sidebar.selectbox[0].options


@pytest.mark.slow  # trains twice (~30 s)
def test_train_cancel_stops_the_process_and_a_resume_finishes_the_run(app_env):
    """What a user relies on when cancelling: the training process is gone, the run is not marked
    complete (its checkpoints are kept), and starting it again resumes and finishes it."""
    import json

    from app_ui import training
    from lcd_core.model import RunDir

    tiny = ["stage1.steps=20", "stage1.n_samples=64", "stage2.steps=1500", "stage2.hidden=32", "stage2.emb_dim=8",
            "stage2.batch_size=128", "n_latent_samples=100", "min_cells=10", "checkpoint_seconds=0.5", "embedding=pca"]
    job = training.start_training(app_env["screen"], "to-cancel", overrides=tiny)
    out, pid = job.out, job.pid
    def in_stage2() -> bool:
        log = out / "log.jsonl"
        return (out / "checkpoints" / "stage2.pt").exists() and log.exists() and '"stage2"' in log.read_text()

    t0 = time.monotonic()  # cancel in the middle of stage 2, once it has checkpointed and logged progress
    while not in_stage2() and time.monotonic() - t0 < 240:
        assert not (out / "COMPLETE").exists(), "finished before it could be cancelled: give it more steps"
        time.sleep(0.2)
    job.cancel()
    with pytest.raises(ProcessLookupError):  # the process (and its group) no longer exists
        os.killpg(pid, 0)
    assert not (out / "COMPLETE").exists() and not RunDir(out).is_complete()
    assert (out / "checkpoints" / "stage2.pt").exists()
    listed = next(j for j in training.trainings() if j.name == "to-cancel")  # as a restarted server finds it
    assert listed.state == "cancelled" and listed.request.overrides == tuple(tiny)
    size = (out / "log.jsonl").stat().st_size
    time.sleep(1.0)
    assert (out / "log.jsonl").stat().st_size == size, "something still trains into the run"

    resumed = training.resume_training(listed)
    assert resumed.pid != pid and resumed.request == job.request
    t0 = time.monotonic()
    while not (out / "COMPLETE").exists() and time.monotonic() - t0 < 240:
        time.sleep(0.5)
    assert RunDir(out).is_complete(), (app_env["dir"] / "runs" / ".jobs" / "to-cancel.log").read_text()[-2000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    starts = [i for i, r in enumerate(log) if r.get("event") == "start"]
    assert len(starts) == 2  # one training, resumed once...
    stages = [{r["stage"] for r in part if r.get("event") == "progress" and r["stage"] in ("stage1", "stage2")}
              for part in (log[:starts[1]], log[starts[1]:])]  # (the fit check after training reports too)
    # ...from its checkpoints: stage 1 (finished before the cancel) is not trained again, stage 2 goes on
    assert stages == [{"stage1", "stage2"}, {"stage2"}], stages


def test_perturb_waits_on_the_cells_home_queued_instead_of_sampling_them_again(app_env):
    """Home queues Perturb's default double, control and singles in the background; the page must find those
    jobs (the prefetch and the fetch once used two tables for one store, so every queued label was sampled
    twice and the warm-up never shortened the first visit)."""
    from app_ui.jobs import jobs

    assert jobs() is jobs("predictions") and jobs("resources") is not jobs()
    AppTest.from_file(APP, default_timeout=60).run()  # Home: the warm-up
    t0 = time.monotonic()
    while jobs().running() and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    queued = [k for k in jobs().keys() if k[0] == "predict"]
    assert len(queued) >= 3, queued  # the double, control and at least one single
    open_page(PAGES[0])
    after = [k for k in jobs().keys() if k[0] == "predict"]
    assert sorted(after) == sorted(queued), ([k[2:] for k in queued], [k[2:] for k in after])


def test_five_sessions_see_only_their_own_results(app_env):
    labels = app_env["doubles"][:3] + ["M1G02", "M2G01"]
    sessions = []
    for lab in labels:
        at = open_page(PAGES[0])
        if "+" in lab:
            at.selectbox(key="pert_double").select(lab).run()
        else:
            at.radio(key="pert_kind").set_value("single").run()
            at.selectbox(key="pert_single").select(lab).run()
        sessions.append((lab, at))
    for lab, at in sessions:  # rerun each after all others chose: still its own perturbation
        settle(at.run())
        text = " ".join(m.value for m in at.markdown if "generated cells" in m.value)
        assert f"<b>{lab}</b>" in text, (lab, text)
        assert at.session_state["last_prediction"] == lab


def test_no_run_pages_explain(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LCD_APP_DEMO_RUN", str(tmp_path / "missing"))
    monkeypatch.setenv("LCD_APP_RUNS", str(tmp_path / "runs"))
    for page in [None] + PAGES:
        at = open_page(page)
        assert not at.exception, (page, [e.message for e in at.exception])
    at = open_page(PAGES[0])
    assert any("No model" in w.value or "No trained model" in w.value for w in [*at.warning, *at.sidebar.warning])


def test_server_threads_leave_a_core_to_the_browser(app_env, monkeypatch):
    """The server's torch threads: every core but one by default (the browser draws on this machine too),
    LCD_APP_THREADS overrides it, a bad value is refused with the variable's name, and job threads started
    afterwards take the setting."""
    import threading

    import torch

    from app_ui import state

    monkeypatch.delenv("LCD_APP_THREADS", raising=False)
    assert state.settings().threads == max(1, len(os.sched_getaffinity(0)) - 1)
    monkeypatch.setenv("LCD_APP_THREADS", "3")
    assert state.settings().threads == 3
    before = torch.get_num_threads()
    try:
        state.share_cores(2)
        seen = []
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 2 and seen == [2]
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("LCD_APP_THREADS", "many")
    with pytest.raises(LCDError, match="LCD_APP_THREADS='many'"):
        state.settings()
    at = open_page(None)
    assert not at.exception and any("LCD_APP_THREADS='many'" in e.value for e in at.error), [e.value for e in at.error]
    assert torch.get_num_threads() == before


_OPEN_THEN_EXIT = """
import sys
from streamlit.testing.v1 import AppTest

at = AppTest.from_file({app!r}, default_timeout=120)
at.run()
if sys.argv[1:]:
    at.switch_page(sys.argv[1])
    at.run()
assert not at.exception, [e.message for e in at.exception]
print("rendered", sys.argv[1:])
"""


@pytest.mark.slow  # one subprocess per page (~30 s)
def test_every_page_then_interpreter_exit_exits_cleanly(tmp_path):
    """Open a page with AppTest and let the interpreter exit while its background jobs still run (the
    shipped demo: the Benchmark page's evaluation is inside torch then): exit status 0, no abort
    ("terminate called without an active exception", 134). One process per page, run side by side."""
    import subprocess
    import sys

    script = tmp_path / "open_then_exit.py"
    script.write_text(_OPEN_THEN_EXIT.format(app=APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCD_APP_")}  # the shipped demo
    env.update(LCD_APP_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    procs = {page or "app.py": subprocess.Popen([sys.executable, str(script), *([page] if page else [])],
                                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True)
             for page in [None, *PAGES]}
    failed = {}
    for page, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0 or "rendered" not in out:
            failed[page] = (proc.returncode, out[-1500:])
    assert not failed, failed


# ---------------------------------------------------------------------------------------- engine pieces the pages use
def test_reference_embedding_projects_new_cells_and_scatter_switches_to_webgl():
    from lcd_core.pl import embedding_scatter
    from lcd_core.tl._embedding import fit_reference_embedding

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (200, 10)), rng.normal(3, 1, (200, 10))])
    labels = ["ctrl"] * 200 + ["A"] * 200
    emb = fit_reference_embedding(X, labels, method="pca", max_cells=300)
    assert emb.coords.shape == (300, 2) and emb.params["n_cells"] == 300
    new = emb.transform(rng.normal(3, 1, (50, 10)))
    assert new.shape == (50, 2)
    # new cells near condition A land near A's reference cells, not control's
    a_centre = emb.coords[emb.labels == "A"].mean(0)
    c_centre = emb.coords[emb.labels == "ctrl"].mean(0)
    assert np.linalg.norm(new.mean(0) - a_centre) < np.linalg.norm(new.mean(0) - c_centre)
    small = embedding_scatter(emb.coords, {"A": new}, {"A": new}, control=emb.coords[:10])
    assert {t.type for t in small.data} == {"scatter"} and len(small.layout.annotations) == 1
    big = embedding_scatter(rng.normal(size=(12_000, 2)), predicted={"A": new}, max_reference_points=None)
    assert {t.type for t in big.data} == {"scattergl"}
    capped = embedding_scatter(rng.normal(size=(12_000, 2)), predicted={"A": new})
    assert len(capped.data[0].x) == 1500
    assert {t.type for t in big.data} == {"scattergl"}


def test_gene_shift_table_and_double_interaction():
    from lcd_core.tl._explore import double_interaction, gene_shift_table

    rng = np.random.default_rng(1)
    ctrl = np.log1p(rng.poisson(20, (300, 30)).astype(float))
    a, b = ctrl.copy(), ctrl.copy()
    a[:, :10] += 0.8
    b[:, 10:20] += 0.8
    ab = ctrl.copy()
    ab[:, :20] += 0.8
    table = gene_shift_table(ab, ctrl, [f"G{i}" for i in range(30)], observed=ab)
    assert set(table["gene"].head(20)) == {f"G{i}" for i in range(20)}
    assert np.allclose(table["predicted_shift"], table["observed_shift"])
    gi = double_interaction(ctrl, a, b, ab)
    assert gi["class"] == "additive" and abs(gi["c_a"] - 1) < 0.2 and abs(gi["c_b"] - 1) < 0.2


def test_jobs_queued_after_another_wait_for_it():
    """Prefetched cells (control, singles) queue behind the label the page shows first; the queue keeps
    order, and results stay keyed by what they compute."""
    import threading

    from app_ui.jobs import Jobs

    table = Jobs()
    gate, order = threading.Event(), []

    def first():
        gate.wait(10)
        order.append("first")
        return 1

    a = table.submit(("t", "first"), first)
    b = table.submit(("t", "second"), lambda: order.append("second") or 2, after=a)
    c = table.submit(("t", "third"), lambda: order.append("third") or 3, after=b)
    assert not b.wait(0.3) and order == []  # queued behind a job that has not finished
    gate.set()
    assert c.wait(10) and order == ["first", "second", "third"]
    assert (a.result, b.result, c.result) == (1, 2, 3)
    assert table.submit(("t", "second"), lambda: 99) is b  # same key: the existing job, not a rerun

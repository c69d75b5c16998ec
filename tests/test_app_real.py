"""The app on the shipped real screen (the Norman 2019 subset in assets/) and its shipped run, with AppTest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_app import settle

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = streamlit_testing.AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
REAL_RUN = ROOT / "assets" / "norman_run"


@pytest.fixture(scope="module")
def real_env(tmp_path_factory):
    if not (REAL_RUN / "COMPLETE").exists():
        pytest.fail("assets/norman_run is not a finished run: the shipped real run is part of the product")
    # a copy: the app saves what it computes (here a PCA embedding) in the run's cache, never in assets/
    import shutil

    run = shutil.copytree(REAL_RUN, tmp_path_factory.mktemp("shipped") / "norman_run")
    env = {"LCD_APP_RUNS": str(tmp_path_factory.mktemp("runs")), "LCD_APP_EMBEDDING": "pca",
           "LCD_APP_REAL_RUN": str(run)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def open_real(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.radio[0].set_value("real").run()
    if page:
        at.switch_page(page)
        at.run()
    return settle(at, 90.0)


def test_home_offers_the_real_screen_with_its_shipped_run(real_env):
    at = open_real()
    assert not at.exception, [e.message for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["cells"] == "3,375" and metrics["combinations"] == "15"
    assert any("Norman et al. 2019" in c.value for c in at.caption)
    assert any("Model ready: `norman_run`" in s.value for s in at.success)


def test_perturb_anchored_switch_changes_the_cells_of_a_held_out_double(real_env):
    at = open_real("pages/1_Perturb.py")
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="pert_double").value == "KLF1+MAP2K6"  # held-out doubles come first

    def shown_cells():
        return [el for el in at.get("plotly_chart")]

    raw = shown_cells()
    at.toggle(key="pert_anchored").set_value(True).run()
    settle(at, 90.0)
    assert not at.exception, [e.message for e in at.exception]
    anchored = shown_cells()
    assert raw and anchored and raw[0].proto.spec != anchored[0].proto.spec

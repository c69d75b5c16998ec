"""One default per setting: the CLI, the Python API, the backends (local and Ray) and the app's pages resolve
CLIPR's options and the sampler budget to the same values, all read from lcd_core._settings."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shutil
from pathlib import Path

import pytest

from lcd_core.clipr import (ALGORITHM_VERSION, CLIPR, VARIANTS, CliprOptions, clipr_directed, clipr_from_drift,
                            clipr_options, clipr_paper, get_clipr)
from lcd_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = ROOT / "assets" / "demo_run"
FIELDS = {f.name for f in dataclasses.fields(CliprOptions)}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A copy of the shipped demo run (its CLIPR caches included): nothing is written into assets/."""
    if not (DEMO_RUN / "COMPLETE").exists():
        pytest.skip("no shipped demo run")
    run = tmp_path_factory.mktemp("defaults") / "demo_run"
    shutil.copytree(DEMO_RUN, run)
    return run


def test_the_defaults_are_the_documented_ones():
    # directed: the variant the CLI and every page offered first, and the better one on every benchmark
    assert CLIPR.variant == "directed" and VARIANTS[0] == "directed"
    assert CLIPR.lam == 1e-4 and CLIPR.ref_point == "control_mean"
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLIPR.lam = 1.0  # type: ignore[misc]
    assert clipr_options() is CLIPR and clipr_options(lam=None, variant=None) is CLIPR
    with pytest.raises(ConfigError, match="unknown CLIPR option"):
        clipr_options(lamda=1e-3)
    with pytest.raises(ConfigError, match="unknown CLIPR variant"):
        clipr_options(variant="undirected")
    with pytest.raises(ConfigError, match="directed variant takes"):
        clipr_options(variant="paper", source="data")


def test_cli_resolves_the_settings_defaults():
    from lcd_core.cli import build_parser, clipr_options_of

    parser = build_parser()
    for cmd in (["clipr", "RUN", "--out", "e.csv"], ["modules", "RUN", "--out", "m.tsv"]):
        assert clipr_options_of(parser.parse_args(cmd)) == CLIPR, cmd
    args = parser.parse_args(["clipr", "RUN", "--variant", "paper", "--lam", "1e-3", "--out", "e.csv"])
    assert clipr_options_of(args) == dataclasses.replace(CLIPR, variant="paper", lam=1e-3)
    # the sampler budget: one name (n_evals), whatever the flag is called; no sampler forced over the run's
    args = parser.parse_args(["predict", "RUN", "--perturb", "A", "--steps", "32", "--out", "p.h5ad"])
    assert args.n_evals == 32 and args.sampler is None


def test_python_api_defaults_are_the_settings():
    # get_clipr and the backends take no option of their own: they start from CLIPR
    assert not FIELDS & set(inspect.signature(get_clipr).parameters)
    # the array-level functions default to the same values
    sig = inspect.signature(clipr_from_drift).parameters
    for name in ("lam", "ref_point", "ref_sigma", "schedule", "max_steps", "fixed_point_tol"):
        assert sig[name].default == getattr(CLIPR, name), name
    assert inspect.signature(clipr_paper).parameters["lam"].default == CLIPR.lam
    sig = inspect.signature(clipr_directed).parameters
    assert sig["ridge"].default == CLIPR.ridge and sig["weight_on_target"].default == CLIPR.weight_on_target


def test_backends_resolve_the_same_defaults(demo_run):
    from lcd_core.backends import LocalBackend
    from lcd_core.backends._base import Backend
    from lcd_core.backends.ray import RayBackend  # the class only: Ray is not started

    shapes = {cls: inspect.signature(cls.clipr) for cls in (Backend, LocalBackend, RayBackend)}
    for cls, sig in shapes.items():
        assert list(sig.parameters) == ["self", "run", "options", "device", "overrides"], cls
        assert sig.parameters["options"].default is None, cls
    # what the local backend computes with no options is what get_clipr computes: the cached read-out of
    # the defaults (the cache key is the options' and the algorithm version's)
    res = LocalBackend().clipr(demo_run, device="cpu", use_cache=True)
    assert "cache" in res.info, "the shipped demo cache does not match the defaults: regenerate it (lcd clipr)"
    assert res.params == {**CLIPR.to_dict(), "algorithm": ALGORITHM_VERSION, "conditions": res.params["conditions"]}
    from lcd_core.model import LCD

    api = get_clipr(LCD.load(demo_run, device="cpu"))
    assert api.params == {k: v for k, v in res.params.items() if k != "conditions"}
    assert (api.effects == res.effects).all()


def test_pages_take_their_defaults_from_the_settings():
    """No page types a CLIPR default of its own (variant order or λ)."""
    for page in sorted((ROOT / "pages").glob("*.py")):
        src = page.read_text()
        for call in re.findall(r'radio\(\s*"CLIPR variant"[^\n]*', src):
            assert "VARIANTS.index(CLIPR.variant)" in call, (page.name, call)
        assert not re.search(r"value=1e-4|\b1e-4 if variant", src), page.name


def test_app_pages_show_the_settings_defaults(demo_run, monkeypatch):
    streamlit_testing = pytest.importorskip("streamlit.testing.v1")
    monkeypatch.setenv("LCD_APP_DEMO_RUN", str(demo_run))
    monkeypatch.setenv("LCD_APP_EMBEDDING", "pca")
    at = streamlit_testing.AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    for page, key in (("pages/2_Causal_graph.py", "cg_variant"), ("pages/3_Modules.py", "mod_variant")):
        at.switch_page(page)
        at.run()
        assert not at.exception, (page, [e.message for e in at.exception])
        assert at.radio(key=key).value == CLIPR.variant, page
    at.switch_page("pages/2_Causal_graph.py")
    at.run()
    at.radio(key="cg_variant").set_value("paper").run()
    assert at.select_slider(key="cg_lam").value == CLIPR.lam
    at.switch_page("pages/4_Train.py")
    at.run()
    from lcd_core.model import DEFAULT_PRESET
    assert at.selectbox(key="tr_preset").value == DEFAULT_PRESET
    assert os.environ["LCD_APP_DEMO_RUN"] == str(demo_run)


def test_training_preset_default_is_one_name_everywhere():
    """``lcd train``, a backend's training request and the Train page start from the same preset."""
    import inspect

    from app_ui import training
    from lcd_core.backends import TrainRequest
    from lcd_core.cli import build_parser
    from lcd_core.model import DEFAULT_PRESET, PRESET_NAMES

    args = build_parser().parse_args(["train", "x.h5ad", "--out", "r"])
    assert args.preset == DEFAULT_PRESET == "auto"
    assert TrainRequest(screen="x.h5ad", out="r").preset == DEFAULT_PRESET
    assert inspect.signature(training.start_training).parameters["preset"].default == DEFAULT_PRESET
    assert set(PRESET_NAMES) == {"auto", "demo", "standard", "paper"}

"""Project-level contracts: the README's two commands, CI running exactly the test command, pinned
dependencies, the engine staying UI-free, and scanpy-style API conventions of pp/tl."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_screen = text[: text.index("## A short tour")]
    return re.findall(r"```bash\n#[^\n]*\n([^\n]+)\n```", first_screen)


def test_readme_first_screen_has_exactly_the_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert "streamlit run app.py" in cmds[0] and "pip install" in cmds[0]
    assert "pytest" in cmds[1] and "pip install" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = _readme_commands()[1].replace(" -q ", " -q ")
    assert test_cmd in ci


def test_torch_is_pinned_and_every_requirement_is_pinned():
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert "torch==2.13.0" in lines
    assert all("==" in ln for ln in lines), lines


def test_engine_never_imports_streamlit():
    offenders = [str(p) for p in (ROOT / "lcd_core").rglob("*.py")
                 if re.search(r"^\s*(import streamlit|from streamlit)", p.read_text(), re.M)]
    assert not offenders


def test_app_entry_opens_without_exception():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert any("LCD Explorer" in t.value for t in at.title)

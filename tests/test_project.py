"""Project-level contracts: the README's two commands, CI running exactly the test command, pinned
dependencies, the engine staying UI-free, scanpy-style API conventions of pp/tl/pl, and no network
address outside loopback in the code."""

from __future__ import annotations

import inspect
import ipaddress
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


# -- API conventions of pp / tl / pl (STYLE.md "Check API conventions by introspection") --------------------
#: the equation-level functions whose positional arguments are the symbols of the formula they implement
#: (METHOD.md): score function, noise levels, normalisation, targets / the four cell sets of an interaction
MANY_POSITIONAL = {"clipr_from_drift", "limit_responses", "fixed_points", "interaction_from_cells",
                   "double_interaction", "whatif_drift_shift", "compare_methods"}
#: options that are always passed by name
KEYWORD_ONLY = {"copy", "inplace", "key_added", "rng", "seed"}


def _public_functions():
    from lcd_core import pl, pp, tl

    for mod in (pp, tl, pl):
        for name in mod.__all__:
            obj = getattr(mod, name)  # every exported name exists
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj


def test_api_conventions_of_pp_tl_pl():
    functions = dict(_public_functions())
    assert len(functions) > 30
    problems = []
    for qualname, fn in functions.items():
        params = list(inspect.signature(fn).parameters.values())
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not (inspect.getdoc(fn) or "").strip():
            problems.append(f"{qualname}: no docstring")
        if "adata" in positional[1:] or ("adata" in [p.name for p in params] and positional[:1] != ["adata"]):
            problems.append(f"{qualname}: adata is not the first argument")
        if len(positional) > 3 and qualname.rsplit(".", 1)[1] not in MANY_POSITIONAL:
            problems.append(f"{qualname}: {len(positional)} positional arguments (at most 3)")
        problems += [f"{qualname}: {name} is not keyword-only" for name in KEYWORD_ONLY & set(positional)]
    assert not problems, problems
    # the exceptions are real (a stale entry would hide nothing and should go)
    names = {q.rsplit(".", 1)[1]: fn for q, fn in functions.items()}
    assert all(len([p for p in inspect.signature(names[n]).parameters.values()
                    if p.kind == p.POSITIONAL_OR_KEYWORD]) > 3 for n in MANY_POSITIONAL)


# -- network: loopback only ------------------------------------------------------------------------------
#: a dotted quad standing alone: not part of a longer dotted number (an OID, a 5-part version) nor glued to
#: a word (a "v" or "x" before it); a trailing full stop ends a sentence and is allowed
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w]|\.\d)")
#: a version pin or comparison in front ("pkg==", ">= ", "version='") is not an address
_VERSION_BEFORE = re.compile(r"(?:[=<>!~]=|[<>]|version[\W_]{0,6})\s*[\"']?$", re.I)
#: the only IPv4 literals allowed: loopback, and the "all interfaces" / "no address" placeholder
_ALLOWED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("0.0.0.0/32"))
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", ".pytest_cache"}


def non_loopback_ipv4(text: str) -> list[str]:
    """The IPv4 literals in ``text`` outside 127.0.0.0/8 and 0.0.0.0 (dotted quads that are not valid
    addresses, e.g. an octet over 255, and version numbers are not addresses)."""
    found = []
    for m in _IPV4.finditer(text):
        if _VERSION_BEFORE.search(text[max(0, m.start() - 20):m.start()]):
            continue
        try:
            addr = ipaddress.ip_address(m.group(1))
        except ValueError:  # an octet over 255 or a leading zero: not an address
            continue
        if not any(addr in net for net in _ALLOWED):
            found.append(m.group(1))
    return found


def test_address_scanner_finds_what_it_should():
    # built from parts, so that this file itself holds no such literal
    test_net = ".".join(["203", "0", "113", "1"])
    private = ".".join(["10", "1", "2", "3"])
    assert non_loopback_ipv4(f'get_backend("ray", address="{test_net}:6379")') == [test_net]
    assert non_loopback_ipv4(f"ray://{private}:10001 and http://{test_net}/.") == [private, test_net]
    assert non_loopback_ipv4(f"s.connect(('{private}', 80))") == [private]
    quad, oid, bad = ".".join("1234"), ".".join("136141"), ".".join(["1", "2", "300", "4"])  # built from parts too
    for fine in ("127.0.0.1:6379", "ray://127.3.2.1:10001", "0.0.0.0", "127.0.0.0/8", f"torch=={'.'.join('2130')}",
                 f"pkg >= {quad}", f"__version__ = '{quad}'", f"oid {oid}", f"v{quad}", bad,
                 "x = 1.5 * 2.0"):
        assert non_loopback_ipv4(fine) == [], fine


def test_no_network_address_outside_loopback_in_the_code():
    """Tests, benchmarks and CI may talk to 127.0.0.0/8 and ::1 only: no other IPv4 address in any
    Python file of the repository (nor in the CI script and the Streamlit config that it runs with)."""
    files = [p for p in ROOT.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    files += [ROOT / ".ci" / "run", *(ROOT / ".streamlit").glob("*.toml")]
    assert len(files) > 50 and ROOT / "tests" / "test_backends.py" in files
    offenders = {str(p.relative_to(ROOT)): hits for p in files if p.exists()
                 if (hits := non_loopback_ipv4(p.read_text(errors="replace")))}
    assert not offenders, offenders

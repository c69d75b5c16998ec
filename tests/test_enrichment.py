"""Gene-set enrichment of modules: hypergeometric p-values, BH, GMT parsing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import hypergeom

from lcd_core.errors import ConfigError
from lcd_core.tl._enrichment import bh_adjust, enrich_modules, read_gmt


def _setup():
    genes = [f"G{i}" for i in range(200)]
    labels = np.array(["unassigned"] * 200, dtype=object)
    labels[:20] = "M1"
    labels[20:45] = "M2"
    sets = {
        "T_M1": genes[:15] + genes[100:110],  # 15 of M1's 20 genes
        "T_M2": genes[20:40] + genes[150:155],
        "T_none": genes[60:90],
        "T_mixed": genes[10:30],
    }
    return genes, labels, sets


def test_pvalues_and_bh_match_references():
    from statsmodels.stats.multitest import multipletests

    genes, labels, sets = _setup()
    df = enrich_modules(labels, genes, sets, q_max=1.01, top=100, min_overlap=0)
    assert df.attrs["n_tests"] == 8
    for r in df.itertuples():
        assert r.p == pytest.approx(hypergeom.sf(r.overlap - 1, 200, r.set_size, r.module_size), abs=1e-12, rel=1e-12)
    full = df.sort_values(["module", "term"])
    ref = multipletests(full["p"].to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(full["q"].to_numpy(), ref, atol=1e-12)
    rng = np.random.default_rng(0)
    p = rng.random(500) ** 3
    np.testing.assert_allclose(bh_adjust(p), multipletests(p, method="fdr_bh")[1], atol=1e-12)
    top = enrich_modules(labels, genes, sets)  # q < 0.01
    found = set(zip(top["module"], top["term"]))
    assert {("M1", "T_M1"), ("M2", "T_M2")} <= found and not any(t == "T_none" for _, t in found)
    assert ("M1", "T_M2") not in found
    r = top.set_index("term").loc["T_M1"]
    # odds ratio of the 2x2 table: a=15, b=5, c=10, d=170
    assert r["odds_ratio"] == pytest.approx(15 * 170 / (5 * 10))


def test_read_gmt(tmp_path):
    p = tmp_path / "sets.gmt"
    p.write_text("SET_A\tdesc\tG1\tG2\tG3\nSET_B\thttp://x\tG4\tNOTAGENE\tG5\n")
    sets = read_gmt(p)
    assert sets == {"SET_A": ["G1", "G2", "G3"], "SET_B": ["G4", "NOTAGENE", "G5"]}
    with pytest.warns(UserWarning, match="NOTAGENE"):
        sets2 = read_gmt(p, genes=[f"G{i}" for i in range(10)])
    assert sets2["SET_B"] == ["G4", "G5"]
    bad = tmp_path / "bad.gmt"
    bad.write_text("SET_A\tdesc\tG1\nBROKEN LINE WITHOUT TABS\nSET_C\tdesc\n")
    with pytest.raises(ConfigError, match=r"line\(s\) 2, 3"):
        read_gmt(bad)
    with pytest.raises(ConfigError, match="No gene"):
        read_gmt(p, genes=["X1", "X2"])
    with pytest.raises(ConfigError, match="Cannot read"):
        read_gmt(tmp_path / "missing.gmt")

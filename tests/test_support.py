"""What a screen supports before training (issue 15 item 1), keeping targets in a gene selection, and the
held-out proposal for a screen without a split (item 2): on the Norman subset and the demo screen."""

from __future__ import annotations

from pathlib import Path

import pytest

from lcd_core.data import read_screen, screen_from_anndata, supported_pages
from lcd_core.model import resolve_split
from lcd_core.pp import add_measured_targets, propose_heldout, select_genes

ROOT = Path(__file__).resolve().parents[1]
NORMAN = next((p for p in (ROOT / "assets" / "norman2019_k562_subset.h5ad",
                           ROOT.parent / "shared" / "data" / "norman2019_k562_subset.h5ad",
                           Path("/work/shared/data/norman2019_k562_subset.h5ad")) if p.exists()), None)
#: the five doubles of the Norman subset whose singles are both measured (../shared/data/README.md)
NORMAN_TESTABLE = {"KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"}


@pytest.fixture(scope="module")
def norman():
    if NORMAN is None:
        pytest.skip("the Norman subset (assets/ or ../shared/data/norman2019_k562_subset.h5ad) is not on this machine")
    return read_screen(NORMAN)


@pytest.fixture(scope="module")
def demo():
    return read_screen(ROOT / "assets" / "demo_screen.h5ad")


@pytest.fixture(scope="module")
def demo_unsplit(demo):
    a = demo.adata.copy()
    del a.uns["lcd_split"]
    return screen_from_anndata(a)


# -- item 1: supported pages --------------------------------------------------------------------------
def test_norman_subset_says_clipr_pages_will_not_work_and_why(norman):
    rep = supported_pages(norman)
    assert rep.pages["perturb"].supported
    assert rep.modelled_targets == ["TMSB4X"]  # 1 of its 31 perturbed genes is measured
    assert len(rep.targets) == 31 and len(rep.unmeasured_targets) == 30
    assert len(rep.clipr_singles) == 1
    for page in ("causal_graph", "modules", "whatif"):
        assert not rep.pages[page].supported
        assert "at least 2 single-gene perturbations" in rep.pages[page].why and "1 of 18 singles" in rep.pages[page].why
    assert set(rep.unsupported) == {"causal_graph", "modules", "whatif"}
    assert set(rep.testable_doubles) == NORMAN_TESTABLE
    assert rep.pages["benchmark"].supported and "5 of 15 combinations" in rep.pages["benchmark"].why
    assert rep.pages["interactions"].supported
    assert rep.dropped_targets == []  # everything the file measures is modelled
    lines = rep.lines()
    assert lines[1].startswith("✗ Causal graph:") and any("30 of 31 perturbed genes are not measured" in l for l in lines)


def test_a_gene_selection_that_drops_targets_is_reported_and_add_measured_targets_keeps_them(norman):
    selection = [g for g in norman.genes if g != "TMSB4X"][:100]
    rep = supported_pages(norman, genes=selection)
    assert rep.dropped_targets == ["TMSB4X"] and rep.n_genes == 100 and rep.n_file_genes == 500
    assert "keep them" in rep.pages["causal_graph"].why
    kept = add_measured_targets(norman, genes=selection)
    assert kept == ["TMSB4X", *selection]
    assert supported_pages(norman, genes=kept).dropped_targets == []
    assert add_measured_targets(norman, genes=kept) == kept  # idempotent


def test_select_genes_keeps_targets_unless_told_not_to(norman):
    assert select_genes(norman, n_genes=1) == ["TMSB4X"]
    assert select_genes(norman, n_genes=1, keep_targets=False) != ["TMSB4X"]


def test_demo_supports_every_page(demo):
    rep = supported_pages(demo)
    assert rep.unsupported == []
    assert len(rep.clipr_singles) == 48 and len(rep.testable_doubles) == 48
    assert "48 of 144 genes perturbed" in rep.pages["causal_graph"].why  # identified only in part
    assert "ships its own split" in rep.pages["benchmark"].why


def test_only_control_and_unmeasured_singles(demo):
    a = demo.adata[demo.adata.obs["perturbation"].isin(["ctrl"])].copy()
    del a.uns["lcd_split"]
    rep = supported_pages(screen_from_anndata(a))
    assert not rep.pages["perturb"].supported and not rep.pages["benchmark"].supported
    assert "no combinations" in rep.pages["benchmark"].why


# -- item 2: held-out proposal ------------------------------------------------------------------------
def test_proposal_on_a_large_enough_screen_is_lcd_train_fold_0(demo_unsplit):
    prop = propose_heldout(demo_unsplit)
    assert prop["source"] == "protocol" and prop["n_testable"] == 48
    assert prop["heldout"] == resolve_split(demo_unsplit, fold=0)["heldout"]  # what `lcd train --fold 0` holds out
    assert len(prop["heldout"]) == 23
    assert "fold 0 of 10" in prop["why"] and "20 tuning doubles" in prop["why"]
    assert propose_heldout(demo_unsplit, seed=1)["heldout"] != prop["heldout"]


def test_proposal_keeps_a_shipped_split(demo):
    prop = propose_heldout(demo)
    assert prop["source"] == "shipped" and prop["heldout"] == sorted(demo.split["heldout"])


def test_proposal_on_the_norman_subset_scales_the_protocol_down(norman):
    prop = propose_heldout(norman)
    assert prop["source"] == "scaled" and prop["n_testable"] == 5 and prop["n_combinations"] == 15
    assert set(prop["heldout"]) <= NORMAN_TESTABLE and len(prop["heldout"]) == 2  # 5 dealt into 4 folds
    assert "Held out 2 of 5 testable doubles" in prop["why"]
    assert propose_heldout(norman) == prop  # the same seed, the same proposal


def test_proposal_without_testable_doubles_holds_out_nothing_and_says_why(demo):
    a = demo.adata[~demo.adata.obs["perturbation"].isin(["CCYL01", "CCYL02"])
                   & demo.adata.obs["perturbation"].str.contains(r"\+|ctrl|^CCYL0[345]$", regex=True)].copy()
    # doubles stay, but those needing CCYL01/CCYL02 (and every other missing single) are untestable
    del a.uns["lcd_split"]
    s = screen_from_anndata(a)
    prop = propose_heldout(s)
    testable = [c for c in s.combos if all(t in set(s.conditions) for t in c.split("+"))]
    assert prop["n_testable"] == len(testable) == 1  # CCYL04+CCYL05 only
    b = demo.adata[demo.adata.obs["perturbation"].isin(["ctrl", "CCYL01+CCYL03"])].copy()
    del b.uns["lcd_split"]
    none = propose_heldout(screen_from_anndata(b))
    assert none["heldout"] == [] and none["source"] == "none" and "none of its 1 combinations" in none["why"]

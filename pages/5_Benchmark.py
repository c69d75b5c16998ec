"""Benchmark: the current run on its held-out conditions, LCD against every baseline (METHOD §7)."""

from __future__ import annotations

import streamlit as st

from app_ui import jobs, state, widgets
from lcd_core import LCDError
from lcd_core.metrics import SUMMARY_COLUMNS, metric_legend, summarize
from lcd_core.model import heldout_conditions, saved_evaluation
from lcd_core.pl import metric_bars

PLOTTED = ["mmd", "energy", "wasserstein", "rmse", "pearson_delta", "pearson_systema", "de_auroc"]


def with_calibrated(summ, half: list):
    """The summary with one replicate-calibrated column per baseline beside the raw mean (NaN where
    undefined: too few cells to split, or a replicate that scores like the baseline)."""
    from lcd_core.model._evaluate import calibrated_tables

    if not half:
        return summ
    _, cal = calibrated_tables(half)
    wide = cal.pivot_table(index=["metric", "method"], columns="baseline", values="score", dropna=False)
    wide.columns = [f"calibrated_vs_{b}" for b in wide.columns]
    out = summ.merge(wide.reset_index(), on=["metric", "method"], how="left")
    cols = list(summ.columns)
    at = cols.index("sem") + 1
    return out[cols[:at] + list(wide.columns) + cols[at:]]


def main() -> None:
    screen, run = widgets.page_setup("Benchmark", "📊")
    st.title("Benchmark")
    model = widgets.require_model(screen, run)
    if model is None or screen is None:
        return
    if not state.same_genes(model, screen):
        st.warning("The selected screen is not the one this run was trained on: choose it on Home to benchmark.")
        return
    held = heldout_conditions(model, screen)
    if not held:
        st.info(f"Run `{run}` holds nothing out of this screen, so there is nothing it has not seen to score. On the "
                "**Train** page, keep the proposed doubles in **Held out for the benchmark** (or list your own) and "
                "train a new run; it appears in the model picker when it finishes.")
        st.page_link("pages/4_Train.py", label="Go to Train", icon=":material/model_training:")
        return
    st.markdown(f"**{len(held)} held-out conditions** of run `{run}` (never seen in training), each predicted by LCD "
                "and by the baselines (control: no change; pooled perturbed cells; additive: control + sum of "
                "single-gene shifts; linear), then compared with the observed cells.")
    n_cells = st.select_slider("Cells per condition and method", [100, 200, 300, 500], value=200, key="bm_cells")
    key = ("evaluate+calibrated", state.run_key(run), screen.data_hash, int(n_cells))
    # saved in the run directory: computed once per run and setting, loaded at every later visit
    result = jobs.run_job(key, lambda: saved_evaluation(model, screen, n_cells=int(n_cells)), label="benchmark",
                        what=f"Evaluating {len(held)} held-out conditions", wait=3.0, store="resources")
    if result is None:
        return
    per, half = result
    try:
        summ = with_calibrated(summarize(per, "lcd"), half)
    except LCDError as e:
        widgets.show_error(e, "Summary")
        return
    metric = st.selectbox("Metric", [m for m in PLOTTED if m in set(summ["metric"])], key="bm_metric")
    st.plotly_chart(metric_bars(summ, [metric], title=f"{metric}: mean ± s.e.m. over held-out conditions"),
                    key="bm_bars", config={"displaylogo": False})
    legend = metric_legend([metric])
    st.caption(f"**{metric}**: {legend['measures'].iloc[0]}; **{legend['better'].iloc[0]} is better**.")
    st.subheader("Summary (all genes; `_top20`: the condition's top-20 DE genes)")
    shown = summ[summ["metric"].isin(PLOTTED + [f"{m}_top20" for m in PLOTTED])].copy()
    shown.insert(2, "better", ["lower" if v else "higher" for v in shown.pop("lower_is_better")])
    help_ = {c: st.column_config.Column(help=h) for c, h in SUMMARY_COLUMNS.items() if c in shown.columns}
    help_["better"] = st.column_config.Column(help="which direction of the metric is better")
    st.dataframe(widgets.dashes(shown), hide_index=True, key="bm_summary", column_config=help_)
    st.caption("win_rate: % of held-out conditions where LCD beats that method (one-sided Wilcoxon p-value). "
               "calibrated_vs_additive / calibrated_vs_pooled: (u − b) / (r − b), 0 = as good as that baseline, "
               "1 = as good as repeating the experiment (half the observed cells predicting the other half). "
               "–: not defined (LCD against itself; too few cells to split for the replicate).")
    with st.expander("What each metric measures, and which direction is better", expanded=False):
        st.dataframe(metric_legend(PLOTTED), hide_index=True, key="bm_legend")
    st.subheader("Per condition")
    st.dataframe(widgets.dashes(per), hide_index=True, key="bm_per_condition")
    prov = widgets.provenance(screen, run, n_cells=int(n_cells), heldout=held)
    c1, c2, c3 = st.columns(3)
    c1.download_button("Per-condition table (CSV)", widgets.csv_bytes(per), "benchmark_per_condition.csv",
                       "text/csv", key="dl_bm_per")
    c2.download_button("Summary (CSV)", widgets.csv_bytes(summ), "benchmark_summary.csv", "text/csv",
                       key="dl_bm_summary")
    widgets.provenance_button(prov, "benchmark.csv", key="dl_bm_prov", where=c3)


try:
    main()
except LCDError as e:
    widgets.show_error(e)

"""Held-out evaluation of a trained run: LCD against every baseline on every metric (METHOD.md §7, §9).

Used by ``lcd evaluate`` and by the app's Benchmark page; writes nothing unless asked
(:func:`write_report`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .._constants import KEYS
from ..baselines import make_baselines
from ..data import Screen
from ..errors import ConfigError
from ..metrics import calibrate, calibrated_summary, score_predictions, split_half_protocol, summarize
from ..train import Progress, ProgressFn
from ._anchor import fit_anchors
from ._lcd import LCD

#: the metric the issue's headline target is stated in (MMD on the condition's top-20 DE genes)
HEADLINE_METRIC = "mmd_top20"


def check_screen_matches(model: LCD, screen: Screen) -> None:
    """Refuse a screen whose genes differ from the run's (the usual cause: another file or gene set)."""
    if list(screen.genes) != list(model.genes):
        missing = [g for g in model.genes if g not in set(screen.genes)]
        raise ConfigError(
            f"the screen does not match the run: the run models {len(model.genes)} genes, the screen has "
            f"{len(screen.genes)}" + (f" and lacks {', '.join(missing[:5])}" if missing else " in another order")
            + "; pass the screen the run was trained on")
    data_hash = model.info.get("data_hash")
    if data_hash and screen.data_hash != data_hash:
        # same genes, other file: allowed (e.g. a re-written copy), but say so in the report
        model.info.setdefault("warnings", []).append("screen file differs from the one the run was trained on")


def training_reference(model: LCD, screen: Screen) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """What every score of a run is measured against: its training conditions as the screen measures them.

    Returns
    -------
    train_cells
        Condition → ``(n_cells, d)`` log1p CP10k cells, for the run's training conditions (control
        included) that the screen has; the baselines are fitted on these.
    train_perturbed_mean
        ``(d,)`` mean over the perturbed training conditions of their mean cell (the reference of the
        Systema Pearson delta); the control mean when the run trained on control only.
    """
    measured = set(screen.conditions)
    train_cells = {c: screen.log1p(c) for c in model.conditions if c in measured}
    perturbed_means = [x.mean(0) for c, x in train_cells.items() if c != KEYS.CONTROL]
    mean = np.mean(perturbed_means, axis=0) if perturbed_means else screen.log1p(KEYS.CONTROL).mean(0)
    return train_cells, mean


def heldout_conditions(model: LCD, screen: Screen) -> list[str]:
    """The run's held-out conditions that ``screen`` measures, in the run's order."""
    measured = set(screen.conditions)
    return [c for c in model.info.get("heldout", []) if c in measured]


def evaluate_run(model: LCD, screen: Screen, *, conditions: list[str] | None = None, n_cells: int = 500,
                 seed: int = 0, sampler: str | None = None, n_evals: int | None = None,
                 progress: ProgressFn | None = None,
                 keep_predictions: dict | None = None, half_protocol: list | None = None) -> pd.DataFrame:
    """Predict every held-out condition with LCD and each baseline; score each with every metric.

    Parameters
    ----------
    model
        A trained :class:`LCD`.
    screen
        The screen it was trained on (same genes).
    conditions
        Test conditions; default: the run's held-out conditions that the screen measures.
    n_cells
        Cells generated per condition and method.
    seed
        Seeds LCD's sampler, the baselines' draws and metric sub-sampling.
    sampler, n_evals
        LCD sampler and budget (default: the run's).
    progress
        Called with a :class:`~lcd_core.train.Progress` (stage ``"evaluate"``, ``record["condition"]``)
        after each condition.
    keep_predictions
        If a dict is given, it receives ``method → {condition: (n_cells, d) cells}``.
    half_protocol
        If a list is given, it receives the rows of the calibration protocol
        (:func:`lcd_core.metrics.split_half_protocol`: every method and the split-half replicate scored
        against one half of the observed cells), the input of :func:`calibrated_tables`.

    Returns
    -------
    Long table, one row per (method, condition): ``method``, ``condition``, ``n_obs`` and the metrics of
    :func:`lcd_core.metrics.score_predictions` (log1p CP10k; the app's Perturb page scores the same way).
    """
    check_screen_matches(model, screen)
    if conditions is None:
        conditions = heldout_conditions(model, screen)
    if not conditions:
        raise ConfigError("the run has no held-out conditions measured in this screen: train with "
                          "--holdout-combos A+B,... or --fold F, or pass conditions explicitly")
    unknown = [c for c in conditions if c not in set(screen.conditions)]
    if unknown:
        raise ConfigError(f"conditions not measured in the screen: {', '.join(unknown[:10])}")
    train_cells, train_perturbed_mean = training_reference(model, screen)
    control = train_cells[KEYS.CONTROL]
    baselines = {name: b.fit(train_cells, KEYS.CONTROL, var_names=screen.genes) for name, b in make_baselines().items()}
    if model.noise is not None and (model.anchors is None or model.anchors.guidance != model.guidance):
        # a run from before anchors, or scored at another guidance than its anchors': fitted here, not saved
        model.anchors = fit_anchors(model, train_cells, seed=seed)

    rows = []
    for i, cond in enumerate(conditions):
        obs = screen.log1p(cond)
        preds = {"lcd": model.predict([cond], n_cells, sampler=sampler, n_evals=n_evals, seed=seed).cells[cond]}
        if model.anchors is not None:
            preds["lcd_anchored"] = model.predict([cond], n_cells, sampler=sampler, n_evals=n_evals, seed=seed,
                                                  anchored=True).cells[cond]
        preds |= {name: b.predict(cond, n_cells, seed=seed) for name, b in baselines.items()}
        if keep_predictions is not None:
            for method, pred in preds.items():
                keep_predictions.setdefault(method, {})[cond] = pred
        scores = score_predictions(preds, obs, control, train_perturbed_mean=train_perturbed_mean, seed=seed)
        rows += [{"method": method, "condition": cond, "n_obs": len(obs), **s} for method, s in scores.items()]
        if half_protocol is not None:
            half_protocol += split_half_protocol(preds, obs, control, train_perturbed_mean=train_perturbed_mean,
                                                 condition=cond, seed=seed)
        if progress is not None:
            progress(Progress("evaluate", i + 1, len(conditions), {"condition": cond}))
    return pd.DataFrame(rows)


def calibrated_tables(half_rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per-condition, summary)`` replicate-calibrated scores from :func:`evaluate_run`'s ``half_protocol``
    rows (:func:`lcd_core.metrics.calibrate`, :func:`lcd_core.metrics.calibrated_summary`)."""
    if not half_rows:
        raise ConfigError("no held-out condition has the 4 observed cells a split-half replicate needs")
    half = pd.DataFrame(half_rows)
    return calibrate(half), calibrated_summary(half)


#: raw metrics shown in the calibrated table of the report (the rest are in summary_calibrated.csv)
CALIBRATED_SHOWN = ["mmd_top20", "energy_top20", "wasserstein_top20", "rmse_top20", "pearson_delta_top20",
                    "pearson_delta", "pearson_systema", "rmse", "de_auroc"]


def calibrated_markdown(cal_summary: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """Markdown table of calibrated scores: one row per metric, one column per method, each cell
    ``vs additive / vs pooled``."""
    metrics = [m for m in (metrics or CALIBRATED_SHOWN) if m in set(cal_summary["metric"])]
    baselines = list(dict.fromkeys(cal_summary["baseline"]))
    methods = list(dict.fromkeys(cal_summary["method"]))
    lines = [f"Replicate-calibrated scores s = (u − b) / (r − b), b = the {' / '.join(baselines)} baseline, "
             "r = a split-half replicate of the observed cells: 0 = as good as the baseline, 1 = as good as "
             "repeating the experiment (means over conditions; every method sub-sampled to the replicate's "
             "size and scored against the same half of the observed cells).", "",
             "| metric | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for metric in metrics:
        sub = cal_summary[cal_summary["metric"] == metric]
        cells = []
        for m in methods:
            vals = [sub[(sub["method"] == m) & (sub["baseline"] == b)]["score"] for b in baselines]
            # + 0.0 after rounding: a baseline against itself prints 0.00, not -0.00
            cells.append(" / ".join(f"{round(v.iloc[0], 2) + 0.0:.2f}" if len(v) and np.isfinite(v.iloc[0]) else "n/a"
                                    for v in vals))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(per_condition: pd.DataFrame, *, reference: str = "lcd") -> str:
    """The summary table as markdown: mean ± s.e.m. per method (best in bold), then win rates of
    ``reference`` against each other method with one-sided Wilcoxon p-values."""
    summ = summarize(per_condition, reference)
    metrics = list(dict.fromkeys(summ["metric"]))
    methods = list(dict.fromkeys(summ["method"]))
    lines = ["| metric | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for metric in metrics:
        sub = summ[summ["metric"] == metric].set_index("method")
        lower = bool(sub["lower_is_better"].iloc[0])
        finite = sub["mean"].dropna()
        best = (finite.idxmin() if lower else finite.idxmax()) if len(finite) else None
        cells = []
        for m in methods:
            mean, sem = sub.loc[m, "mean"], sub.loc[m, "sem"]
            txt = f"{mean:.4g} ± {sem:.2g}" if np.isfinite(mean) else "n/a"
            cells.append(f"**{txt}**" if m == best else txt)
        arrow = "↓" if lower else "↑"
        lines.append(f"| {metric} {arrow} | " + " | ".join(cells) + " |")
    lines += ["", f"Win rate of {reference} (% of held-out conditions where it is strictly better; "
              "one-sided Wilcoxon signed-rank p):", "",
              "| metric | " + " | ".join(m for m in methods if m != reference) + " |",
              "|---" * len(methods) + "|"]
    for metric in metrics:
        sub = summ[summ["metric"] == metric].set_index("method")
        cells = [f"{sub.loc[m, 'win_rate']:.0f}% (p={sub.loc[m, 'p_value']:.2g})"
                 if np.isfinite(sub.loc[m, "win_rate"]) else "n/a" for m in methods if m != reference]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(per_condition: pd.DataFrame, out: str | Path, *, provenance: dict,
                 half_rows: list[dict] | None = None) -> Path:
    """Write ``per_condition.csv``, ``summary.md``, ``summary.csv``, ``provenance.json`` and plots
    (``mmd_top20.png``, ``metrics.html``) into ``out``; with ``half_rows`` (:func:`evaluate_run`'s
    ``half_protocol``) also the calibrated scores: ``calibrated_per_condition.csv``,
    ``summary_calibrated.csv``, ``calibrated.json`` and a section of ``summary.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_condition.to_csv(out / "per_condition.csv", index=False)
    summarize(per_condition, "lcd").to_csv(out / "summary.csv", index=False)
    head = "\n".join(f"- {k}: {v}" for k, v in provenance.items())
    text = f"# Held-out evaluation\n\n{head}\n\n" + summary_markdown(per_condition)
    if half_rows:
        cal_per, cal_summ = calibrated_tables(half_rows)
        cal_per.to_csv(out / "calibrated_per_condition.csv", index=False)
        cal_summ.to_csv(out / "summary_calibrated.csv", index=False)
        records = cal_summ.astype(object).where(cal_summ.notna(), None).to_dict(orient="records")
        (out / "calibrated.json").write_text(json.dumps({"summary": records}, indent=2, default=str))
        text += "\n## Replicate-calibrated\n\n" + calibrated_markdown(cal_summ)
    (out / "summary.md").write_text(text)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))
    _plots(per_condition, out)
    return out


def _plots(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import plotly.express as px

    if HEADLINE_METRIC in df:
        wide = df.pivot(index="condition", columns="method", values=HEADLINE_METRIC)
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(wide)), 4))
        wide.plot.bar(ax=ax, width=0.8)
        ax.set_ylabel("MMD² on top-20 DE genes (lower is better)")
        ax.set_xlabel("held-out condition")
        fig.tight_layout()
        fig.savefig(out / f"{HEADLINE_METRIC}.png", dpi=120)
        plt.close(fig)
    metric_cols = [c for c in df.columns if c not in ("method", "condition", "n_obs")]
    long = df.melt(id_vars=["method", "condition"], value_vars=metric_cols, var_name="metric")
    fig = px.box(long, x="method", y="value", color="method", facet_col="metric", facet_col_wrap=4,
                 points="all", hover_data=["condition"])
    fig.update_yaxes(matches=None)
    fig.write_html(out / "metrics.html", include_plotlyjs=True, full_html=True)  # self-contained: no network when opened


def evaluate_folds(run: str | Path, screen: Screen, *, n_cells: int = 500, seed: int = 0, device: str = "auto",
                   folds: list[int] | None = None, progress=None, backend=None,
                   read_kwargs: dict | None = None, half_protocol: list | None = None) -> pd.DataFrame:
    """The paper's k-fold protocol end to end (METHOD.md §9): for each fold, train a model with the
    run's configuration on everything but that fold (and the tuning doubles) into ``<run>/folds/<f>``
    (resumed if interrupted), then evaluate on the fold's doubles.

    With a ``backend`` (:func:`lcd_core.backends.get_backend`) the unfinished folds are trained there
    (all at once on Ray); ``screen.path`` must then be set. Returns the per-condition table of all
    folds, with a ``fold`` column.
    """
    from ..pp import split_combinations
    from ._presets import TrainConfig
    from ._run import RunDir
    from ._train import train

    cfg = RunDir(run).read_config()
    config = TrainConfig.from_dict(cfg["config"])
    protocol = split_combinations(screen, seed=config.seed)
    folds = list(folds if folds is not None else range(len(protocol["folds"])))
    dirs = {f: Path(run) / "folds" / str(f) for f in folds}
    todo = [f for f in folds if not RunDir(dirs[f]).is_complete()]
    if todo and backend is not None and screen.path is not None:
        backend.train_folds(screen.path, [dirs[f] for f in todo], todo, config=config, device=device,
                            progress=progress, read_kwargs=read_kwargs)
    tables = []
    for f in folds:
        fold_dir = dirs[f]
        if RunDir(fold_dir).is_complete():
            model = LCD.load(fold_dir, device=device)
        else:
            model = train(screen, fold_dir, config=config, device=device, fold=f, progress=progress)
        # scored on the fold's test doubles only; the tuning doubles are held out but not scored
        table = evaluate_run(model, screen, n_cells=n_cells, seed=seed, conditions=list(protocol["folds"][f]),
                             half_protocol=half_protocol)
        tables.append(table.assign(fold=f))
    return pd.concat(tables, ignore_index=True)


def cell_eval_anndata(cells: dict[str, np.ndarray], genes: list[str]):
    """The layout cell-eval reads: log1p CP10k in ``.X`` (float32), ``var_names`` = ``genes`` in order,
    ``obs["perturbation"]`` (categorical) naming each cell's condition, cells in the order of ``cells``."""
    import anndata as ad

    labels = np.repeat(list(cells), [len(v) for v in cells.values()])
    return ad.AnnData(X=np.concatenate([np.asarray(v) for v in cells.values()]).astype(np.float32),
                      obs=pd.DataFrame({KEYS.PERT: pd.Categorical(labels)},
                                       index=[f"cell{i}" for i in range(len(labels))]),
                      var=pd.DataFrame(index=list(genes)))


def prediction_anndata(model: LCD, predictions: dict[str, np.ndarray], *, control: np.ndarray | None = None,
                       n_control: int = 500, seed: int = 0):
    """Predicted cells in the cell-eval layout of ``lcd evaluate``'s ``predicted.h5ad``, ready to download.

    Parameters
    ----------
    model
        The run that generated them (its genes name the columns).
    predictions
        condition → ``(n, d)`` generated cells, log1p CP10k.
    control
        ``(n0, d)`` generated control cells (cell-eval compares against the file's own ``ctrl`` cells);
        default: ``n_control`` generated now with ``seed``.

    Returns
    -------
    AnnData: ``ctrl`` cells first, then each prediction; ``uns["lcd_prediction"]`` records the run and seed.
    """
    if control is None:
        control = model.predict([KEYS.CONTROL], n_control, seed=seed).cells[KEYS.CONTROL]
    a = cell_eval_anndata({KEYS.CONTROL: control, **{c: v for c, v in predictions.items() if c != KEYS.CONTROL}},
                          list(model.genes))
    a.uns["lcd_prediction"] = {"run": str(model.info.get("run") or ""), "seed": int(seed), "space": "log1p CP10k"}
    return a


def h5ad_bytes(adata) -> bytes:
    """An AnnData as the bytes of an ``.h5ad`` file (for a download button)."""
    import tempfile
    from pathlib import Path as _Path

    with tempfile.TemporaryDirectory() as tmp:  # h5py writes files, not streams, on every platform we support
        path = _Path(tmp) / "cells.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


def cell_eval_files(model: LCD, screen: Screen, predictions: dict[str, np.ndarray], out: str | Path, *,
                    n_control: int = 500, seed: int = 0) -> tuple[Path, Path]:
    """Write ``predicted.h5ad`` and ``observed.h5ad`` in the layout cell-eval reads
    (:func:`cell_eval_anndata`), with ``ctrl`` control cells in both (generated control cells in the
    prediction)."""
    out = Path(out)
    pred_ctrl = model.predict([KEYS.CONTROL], n_control, seed=seed).cells[KEYS.CONTROL]
    pred = {KEYS.CONTROL: pred_ctrl, **predictions}
    obs = {c: screen.log1p(c) for c in pred}
    paths = out / "predicted.h5ad", out / "observed.h5ad"
    cell_eval_anndata(pred, list(model.genes)).write_h5ad(paths[0])
    cell_eval_anndata(obs, list(model.genes)).write_h5ad(paths[1])
    return paths

"""Plotly figure builders for the app and notebooks: each returns a ``plotly.graph_objects.Figure``,
never draws on screen, and knows nothing about Streamlit."""

from ._embedding import embedding_scatter
from ._genes import gene_violins, shift_agreement, shift_bars, shift_scatter
from ._heatmap import effect_heatmap
from ._network import ego_network, ego_graph
from ._interactions import gi_map, gi_scatter
from ._metrics import loss_curve, metric_bars

__all__ = ["embedding_scatter", "effect_heatmap", "ego_network", "ego_graph", "metric_bars", "loss_curve", "gi_scatter", "gi_map",
           "shift_scatter", "shift_agreement", "gene_violins", "shift_bars"]

"""Simulated screens with known causal truth (METHOD.md §8): the paper's linear generator, a nonlinear
count generator whose combinations interact, the ZIP measurement model, and the embedded demo."""

from ._demo import demo_screen_path, make_demo_screen, write_demo_gmt, write_demo_screen
from ._graphs import random_graph
from ._linear import LinearSDE, linear_sde, simulate_linear
from ._measurement import draw_measurement, expected_counts, zip_counts
from ._nonlinear import NonlinearConfig, NonlinearSDE, nonlinear_sde, simulate_nonlinear
from ._simulate import simulate

__all__ = [
    "random_graph",
    "LinearSDE",
    "linear_sde",
    "simulate_linear",
    "NonlinearConfig",
    "NonlinearSDE",
    "nonlinear_sde",
    "simulate_nonlinear",
    "draw_measurement",
    "zip_counts",
    "expected_counts",
    "simulate",
    "make_demo_screen",
    "demo_screen_path",
    "write_demo_screen",
    "write_demo_gmt",
]

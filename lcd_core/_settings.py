"""Settings with a default that more than one layer reads, one typed object each: the CLI, the Python
API, the backends and the app's pages take their defaults from here (tests/test_defaults.py checks it).

- :data:`DEFAULT_PRESET`: the training preset.
- :class:`CliprOptions` / :data:`CLIPR`: CLIPR (METHOD.md §4), at once the solver's arguments, the
  provenance (:meth:`CliprOptions.to_dict`) and, with the algorithm version, the cache key
  (:func:`lcd_core.clipr.cache_key`).

Defaults are chosen by benchmark (docs/benchmarks.md), not copied from the paper; each field says why.
No torch here: ``lcd --help`` builds its parser from these defaults and must stay instant.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from .errors import ConfigError

#: training presets (lcd_core.model._presets); "auto" sizes the demo preset to the screen and the device
PRESET_NAMES = ("auto", "demo", "standard", "paper")
#: the preset of ``lcd train``, the Train page and a backend's training request
DEFAULT_PRESET = "auto"
#: extra stage-2 networks `lcd ensemble` trains (with the run's own: 4), and the nominal coverage of the
#: prediction intervals they give (lcd_core.model._intervals)
ENSEMBLE_MEMBERS = 3
INTERVAL_LEVEL = 0.9

#: the two estimators (METHOD §4): "directed" [ours] first, the default
VARIANTS = ("directed", "paper")
#: where directed CLIPR takes Σ and the limit responses from (METHOD §4 "offer both")
DIRECTED_SOURCES = ("cells", "fixed_points", "data")
#: the reference point s⁰ of the paper variant's initial responses
REF_POINTS = ("control_mean", "origin")

#: fields each variant reads: the rest do not enter its cache key or provenance
_PAPER_FIELDS = ("variant", "lam", "ref_point", "ref_sigma", "schedule", "max_steps", "fixed_point_tol")
_DIRECTED_FIELDS = ("variant", "source", "n_cells", "seed", "weight_on_target", "ridge", "solver_tol")
_FIXED_POINT_FIELDS = ("schedule", "max_steps", "fixed_point_tol")


@dataclass(frozen=True)
class CliprOptions:
    """Options of CLIPR; :data:`CLIPR` holds the defaults. Build variations with :func:`clipr_options`.

    Examples
    --------
    >>> from lcd_core.clipr import CLIPR, clipr_options  # also in lcd_core._settings
    >>> CLIPR.variant
    'directed'
    >>> clipr_options(variant="paper", lam=1e-3).lam
    0.001
    """

    # -- which estimator ---------------------------------------------------------------------------
    #: "directed" [ours]: Lyapunov + on-target equations, which identify the direction of links and
    #: recover the graph better on every benchmark (docs/benchmarks.md); "paper": the authors' ridge solve
    variant: str = "directed"

    # -- paper variant -----------------------------------------------------------------------------
    #: ridge λ of Â = −V Lᵀ (L Lᵀ + λI)⁻¹ (METHOD §4: 1e-4 on the paper's benchmarks)
    lam: float = 1e-4
    #: where v_q is read: "control_mean" (x = 0, where the network has seen data; linear protocol d = K = 100,
    #: seeds 0/1/2: sign-AUROC 0.966 / 0.963 / 0.951 against 0.958 / 0.936 / 0.794 at the paper's "origin")
    ref_point: str = "control_mean"
    #: noise level at which v_q is read; None: the trained level nearest 0.17 (METHOD §4 notes)
    ref_sigma: float | None = None

    # -- limit responses (paper variant; directed with source="fixed_points") ----------------------
    #: annealed flow of the fixed points: "denoiser" takes a tenth of the fast schedule's evaluations
    schedule: str = "denoiser"
    #: steps per noise level; None: the schedule's own count
    max_steps: int | None = None
    #: relative-step tolerance of the flows' early stop; None: the schedule's own
    fixed_point_tol: float | None = None

    # -- directed variant --------------------------------------------------------------------------
    #: where Σ and the limit responses come from: generated "cells" of every condition, the drift's
    #: "fixed_points" with Σ from generated control cells, or the measured cells ("data", no count model)
    source: str = "cells"
    #: generated cells per condition
    n_cells: int = 300
    #: seed of the generated cells
    seed: int = 0
    #: weight of the on-target equations against the Lyapunov equation
    weight_on_target: float = 1.0
    #: ridge of the directed least squares (a tie-breaker; the equations carry the information)
    ridge: float = 1e-10
    #: CG relative residual: on moments estimated from cells the estimate has converged by 1e-4 (demo 26
    #: iterations instead of 546, the same AUROC, Pearson and module ARI; 1e-3 gave a lower ARI)
    solver_tol: float = 1e-4

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown CLIPR variant {self.variant!r}; use paper or directed")
        if self.source not in DIRECTED_SOURCES or (self.variant != "directed" and self.source != "cells"):
            raise ConfigError(f"source={self.source!r}: the directed variant takes one of {', '.join(DIRECTED_SOURCES)}")
        if self.ref_point not in REF_POINTS:
            raise ConfigError(f"ref_point must be one of {', '.join(REF_POINTS)}, got {self.ref_point!r}")
        for name in ("lam", "ridge", "solver_tol", "weight_on_target"):
            if not isinstance(getattr(self, name), numbers.Real) or getattr(self, name) < 0:
                raise ConfigError(f"CLIPR option {name} must be a number >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.n_cells, numbers.Integral) or self.n_cells < 2:
            raise ConfigError(f"CLIPR option n_cells must be an integer >= 2, got {self.n_cells!r}")

    def to_dict(self) -> dict:
        """The options this variant reads, as plain values (provenance, ``CliprResult.params``)."""
        names = _PAPER_FIELDS if self.variant == "paper" else _DIRECTED_FIELDS
        if self.variant == "directed" and self.source == "fixed_points":
            names = names + _FIXED_POINT_FIELDS
        return {n: getattr(self, n) for n in names}


#: the defaults
CLIPR = CliprOptions()


def clipr_options(options: CliprOptions | None = None, /, **overrides) -> CliprOptions:
    """``options`` (default :data:`CLIPR`) with ``overrides`` by field name; a ``None`` value keeps the
    default (so callers can pass an unset argument through). Unknown names and bad values raise
    :class:`~lcd_core.ConfigError`."""
    base = CLIPR if options is None else options
    if not isinstance(base, CliprOptions):
        raise ConfigError(f"options must be a CliprOptions, got {type(base).__name__}")
    fields = {f.name for f in dataclasses.fields(CliprOptions)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown CLIPR option(s) {', '.join(unknown)}; use {', '.join(sorted(fields))}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes) if changes else base

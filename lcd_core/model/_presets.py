"""Training presets: one dataclass holding both stages' settings, and the named presets of ``lcd train``.

- ``auto`` (the default of ``lcd train``): ``demo`` sized to the screen on a CPU, ``standard`` on a GPU.
- ``demo``: a laptop CPU, minutes on the embedded demo screen (~150 genes, ~90 conditions).
- ``standard``: one GPU, a 1000-gene, ~100k-cell screen.
- ``paper``: the authors' settings (METHOD.md §2); days on a CPU, hours on a GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..train import Stage1Config, Stage2Config


@dataclass
class TrainConfig:
    """Everything ``lcd train`` needs besides the data."""

    preset: str = "demo"  # name of the preset this config started from
    stage1: Stage1Config = field(default_factory=Stage1Config)  # measurement-model stage
    stage2: Stage2Config = field(default_factory=Stage2Config)  # score-matching stage
    n_latent_samples: int = 10_000  # stage-1 latent samples per condition handed to stage 2 (METHOD.md §2)
    min_cells: int = 20  # conditions with fewer cells are left out of training (reported)
    val_fraction: float = 0.1  # share of each training condition's cells held out for validation (min 3); 0: none
    checkpoint_seconds: float = 30.0  # wall time between checkpoints
    sampler: str = "fast"  # default sampler of predictions made with this run
    sampler_evals: int | None = None  # its n_evals: network evaluations per cell; None = the sampler's default
    # [ours] weight pushing a perturbation's score away from the control's (sampling.guided); 1: the paper's sampling.
    # 1.3 ≈ 1 / 0.78, the share of each shift the paper's sampling keeps (docs/benchmarks.md, "Guidance")
    guidance: float = 1.3
    # [ours] after training, one factor per gene on the count model's rate so that generated training conditions are
    # as bright as the measured ones (lcd_core.model._calibration; docs/benchmarks.md, "Rate calibration")
    rate_calibration: bool = True
    seed: int = 0  # seeds both stages and the latent draws
    embedding: str = "umap"  # the app's reference embedding, fitted and saved at the end: umap, pca or none

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The configuration :meth:`to_dict` wrote (a run's ``config.json``). A stage-2 record without
        ``preconditioning`` or ``scale`` was written before they existed, by a run trained with METHOD's
        ``"ve"`` and σ_all: it reads back so, so that its ensemble and its resumed training build the network
        and the units it has. A record without ``rate_calibration`` comes from a run whose count model was never
        calibrated: a guidance refit keeps it so (``lcd fit --rate-calibration on`` switches it on)."""
        d = dict(d)
        try:
            s1 = Stage1Config(**_tuples(d.pop("stage1", {})))
            s2 = Stage2Config(**{"preconditioning": "ve", "scale": "all", **_tuples(d.pop("stage2", {}))})
            return cls(stage1=s1, stage2=s2, **{"rate_calibration": False, **d})
        except TypeError as e:
            raise ConfigError(f"invalid training configuration: {e}") from None


def _tuples(d: dict) -> dict:
    # JSON turns tuples into lists; the dataclasses declare tuples
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def get_preset(name: str, *, seed: int = 0) -> TrainConfig:
    """The named preset with ``seed`` applied to every stage (``auto`` needs the screen: :func:`auto_preset`)."""
    if name == "auto":
        raise ConfigError("the auto preset is sized to a screen: use auto_preset(n_genes, n_conditions, device=...)")
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of auto, {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    cfg.seed = seed
    cfg.stage1.seed = seed
    cfg.stage2.seed = seed
    return cfg


def _demo() -> TrainConfig:
    return TrainConfig(
        preset="demo",
        # gaussian generators with a moment warm start: ~2.4x cheaper than the MLP and nearly as good at
        # this size; 20 conditions per step is safe with beta1 = 0 (a skipped condition gets no update)
        stage1=Stage1Config(generator="gaussian", n_samples=500, batch_size=64, conditions_per_step=20, steps=250,
                            warmup=10, lr=3e-3, log_every=10),
        # 5000 stage-2 steps: LCD beats additive on 12/16 held-out doubles (mmd_top20); 3000 gave 73 % (docs/benchmarks.md)
        stage2=Stage2Config(hidden=512, n_layers=2, emb_dim=256, batch_size=1024, steps=5000, weight_decay=0.3,
                            log_every=50),
        n_latent_samples=2000,
        checkpoint_seconds=15.0,
    )


def _standard() -> TrainConfig:
    return TrainConfig(
        preset="standard",
        stage1=Stage1Config(generator="mlp", n_samples=4000, batch_size=64, steps=20_000, warmup=1000),
        stage2=Stage2Config(hidden=1024, n_layers=2, emb_dim=1024, batch_size=8192, steps=50_000),
        n_latent_samples=10_000,
        checkpoint_seconds=120.0,
    )


def _paper() -> TrainConfig:
    return TrainConfig(
        preset="paper",
        stage1=Stage1Config(generator="mlp", init="random", n_samples=20_000, batch_size=64, steps=250_000,
                            warmup=5000, lr=3e-4, noise_lr=3e-4, conditions_per_step=1, temps=(1.0, 20.0)),
        stage2=Stage2Config(hidden=1024, n_layers=2, emb_dim=1024, batch_size=8192, steps=50_000,
                            mixed_conditions=False, weight_decay=0.3, sigma_out=0.0, preconditioning="ve",
                            scale="all"),
        n_latent_samples=10_000,
        checkpoint_seconds=300.0,
        sampler="reference",
        rate_calibration=False,
    )


PRESETS = {"demo": _demo, "standard": _standard, "paper": _paper}

#: wall time the ``auto`` preset plans a whole CPU training for (issue 13: the 500-gene Norman subset in ≤ 5 min
#: on the idle 2-core reference CPU; 20 s of margin for a machine that is not quite idle)
AUTO_CPU_SECONDS = 280.0
#: stage-1 seconds per unit of ``steps · conditions_per_step · batch · n_samples · genes`` on the reference CPU
#: (Norman: 88 s at 250 · 20 · 64 · 500 · 500, 2026-11-28)
CPU_STAGE1_SECONDS_PER_UNIT = 1.1e-9
#: stage-2 seconds per unit of ``batch · hidden · (2 · genes + hidden · (layers − 1))`` on the reference CPU
#: (Norman: 64 ms a step at 1024 · 512 · (2 · 500 + 512), fused AdamW)
CPU_STAGE2_SECONDS_PER_UNIT = 8.1e-11
#: what follows the two stages on the reference CPU: anchors, fit check, reference UMAP, reading and writing
#: (Norman: ~50 s)
CPU_OTHER_SECONDS = 50.0


def auto_preset(n_genes: int, n_conditions: int, *, device: str = "cpu", seed: int = 0) -> TrainConfig:
    """The ``auto`` preset (``lcd train``'s default): a preset sized to the screen and the device.

    On a GPU it is ``standard``. On a CPU it is ``demo`` planned to train in :data:`AUTO_CPU_SECONDS` on
    the reference 2-core CPU: stage 1 keeps the demo's 250 steps with every condition in each step up to
    20, and stage 2 gets the time left after stage 1 and what follows it (cost models measured on that
    CPU), as steps between 2000 and the demo's 5000. A wider screen pays for its costlier steps with
    fewer of them: on the Norman subset (500 genes) 2200 instead of 5000, and its held-out scores did not
    move (docs/benchmarks.md, "Real screens").

    Parameters
    ----------
    n_genes, n_conditions
        Modelled genes and training conditions of the screen.
    device
        The resolved device (``cpu``, ``cuda[:N]``, ``mps``).
    """
    if str(device).startswith("cuda"):
        cfg = _standard()
    else:
        cfg = _demo()
        s1, s2 = cfg.stage1, cfg.stage2
        s1.conditions_per_step = min(20, max(1, n_conditions))
        stage1 = s1.steps * s1.conditions_per_step * s1.batch_size * s1.n_samples * n_genes
        left = AUTO_CPU_SECONDS - CPU_OTHER_SECONDS - stage1 * CPU_STAGE1_SECONDS_PER_UNIT
        unit = s2.batch_size * s2.hidden * (2 * n_genes + s2.hidden * (s2.n_layers - 1))
        steps = left / (unit * CPU_STAGE2_SECONDS_PER_UNIT)
        s2.steps = int(min(5000, max(2000, round(steps, -2))))
    cfg.preset = "auto"
    cfg.seed = cfg.stage1.seed = cfg.stage2.seed = seed
    return cfg


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` overrides (``stage2.steps=2000``, ``n_latent_samples=500``) in place.

    A value is parsed as the type of the field it replaces; unknown keys and ill-typed values fail
    (nanoGPT's configurator rule).
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value (e.g. stage2.steps=2000)")
        *path, name = key.strip().split(".")
        target = config
        for part in path:
            if part not in ("stage1", "stage2") or target is not config:
                raise ConfigError(f"unknown configuration section {part!r} in {item!r}; use stage1. or stage2.")
            target = getattr(config, part)
        fields = {f.name: f for f in dataclasses.fields(target)}
        if name not in fields:
            raise ConfigError(f"unknown configuration key {key!r}; known: {', '.join(sorted(fields))}")
        setattr(target, name, _parse_like(getattr(target, name), raw.strip(), key))
    config.stage1.__post_init__()  # the sections' own checks, before any stage runs
    config.stage2.__post_init__()
    return config


def _parse_like(current, raw: str, key: str):
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, tuple):
            return tuple(float(v) for v in raw.strip("()").split(",") if v.strip())
        if current is None:  # optional fields: None, or an int
            return None if raw.lower() == "none" else int(raw)
        return raw
    except ValueError:
        raise ConfigError(f"override {key}={raw!r} does not match the type of the current value {current!r}") from None

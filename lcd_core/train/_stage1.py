"""Stage 1 of LCD: deconvolve count noise by fitting one implicit prior per condition (METHOD.md §2).

Data-agnostic: takes one raw-count array per condition and the fixed unit scale, never AnnData.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lcd_core._progress import Progress, ProgressFn
from lcd_core.train._schedule import warmup_cosine
from lcd_core.errors import ConfigError
from lcd_core.module._generator import StackedGenerators, tempered_evidence_loss
from lcd_core.module._noise import ZIPNoise, estimate_dropout, naive_latent_moments


@dataclass
class Stage1Config:
    """Settings of stage 1. CPU-sized defaults; the paper's values are in each comment."""

    # generator architecture
    generator: Literal["mlp", "gaussian"] = "mlp"  # per-condition generator; "gaussian" is 2-4x cheaper per step
    latent_dim: int = 64  # dimension of z (paper 64)
    width: int = 64  # residual-stream width in z-space (paper 64)
    n_blocks: int = 4  # residual blocks in z-space (paper 4)
    gene_hidden: int = 256  # hidden width of gene-space residual blocks (paper 256)
    n_gene_blocks: int = 2  # residual blocks in gene space (paper 2)
    init: Literal["moments", "random"] = "moments"  # warm start: noise-corrected per-condition latent moments
    init_cov_shrink: float = 1.0  # scale applied to the warm start's moment covariance
    dropout_init: float | None = None  # initial dropout pi of every gene; None: moment estimate from zero fractions
    # objective
    n_samples: int = 1000  # M latent samples per condition and step (paper 20000)
    batch_size: int = 64  # B cells per condition and step (paper 64)
    temps: tuple[float, ...] = (1.0, 2.0)  # temperatures (paper (1, 20): at CPU budgets T = 20 collapsed the covariance)
    # optimisation
    lr: float = 3e-3  # peak learning rate of the generators (paper 3e-4 over 250k steps)
    noise_lr: float = 1e-2  # peak learning rate of the dropout logits (paper: = lr; Adam moves a logit ~lr per step)
    warmup: int = 50  # linear warm-up steps (paper 5000)
    steps: int = 500  # total steps; cosine decay to 0 at the end (paper 250000)
    clip: float = 1.0  # gradient-norm clip (paper 1.0)
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas (paper (0, 0.99))
    conditions_per_step: int | None = None  # None: every condition every step (paper: 1); a subset is safe only with betas[0] = 0
    log_every: int = 10  # steps between history entries / progress calls
    seed: int = 0  # seeds initialisation, cell batches and latent draws

    def __post_init__(self):
        self.temps, self.betas = tuple(float(t) for t in self.temps), tuple(float(b) for b in self.betas)
        if self.generator not in ("mlp", "gaussian"):
            raise ConfigError(f"Stage1Config.generator must be 'mlp' or 'gaussian', got {self.generator!r}.")
        if self.init not in ("moments", "random"):
            raise ConfigError(f"Stage1Config.init must be 'moments' or 'random', got {self.init!r}.")
        positive = ("latent_dim", "width", "n_samples", "batch_size", "steps", "log_every")
        if any(getattr(self, k) < 1 for k in positive) or self.warmup < 0 or self.n_blocks < 0 or self.n_gene_blocks < 0:
            raise ConfigError(f"Stage1Config: {', '.join(positive)} must be >= 1; warmup and block counts >= 0.")
        if not self.temps or min(self.temps) <= 0 or self.lr <= 0 or self.noise_lr < 0 or self.clip <= 0:
            raise ConfigError("Stage1Config: temps, lr and clip must be positive (noise_lr >= 0).")
        if self.dropout_init is not None and not 0.0 < self.dropout_init < 1.0:
            raise ConfigError("Stage1Config.dropout_init must lie in (0, 1).")
        if self.conditions_per_step is not None and self.conditions_per_step < 1:
            raise ConfigError("Stage1Config.conditions_per_step must be None (all) or >= 1.")


@dataclass
class Stage1Result:
    """Fitted stage 1: the measurement model, the generators and what is needed to resume.

    Attributes
    ----------
    noise
        Fitted :class:`ZIPNoise` (u fixed, dropout logits learned).
    generators
        Fitted :class:`StackedGenerators`, one per condition in input order.
    history
        One dict per logged step: ``step``, ``lr``, ``loss``, ``nll_T*``, ``seconds`` and, with validation
        cells, ``val_loss`` (nats per held-out cell, :func:`validation_nll`).
    config
        The config it ran with.
    step
        Steps done (``< config.steps`` if stopped by ``max_seconds``).
    optimizer
        The optimiser, for resuming.
    rng
        The torch generator drawing batches and latents, for resuming.
    best
        With validation cells: ``{"step", "val_loss", "model"}``, the weights with the lowest validation
        loss so far; once all steps ran, ``noise`` and ``generators`` hold these weights. ``None`` without.
    """

    noise: ZIPNoise
    generators: StackedGenerators
    history: list[dict[str, float]]
    config: Stage1Config
    step: int
    optimizer: torch.optim.Optimizer
    rng: torch.Generator
    best: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps

    def use_best(self) -> None:
        """Load the best validation weights (a stage cut short by time ends on them too); no-op without."""
        if self.best is not None:
            nn.ModuleDict({"noise": self.noise, "generators": self.generators}).load_state_dict(self.best["model"])

    def state_dict(self) -> dict[str, Any]:
        """Plain containers (tensors, ints, floats, lists, dicts) to resume from; pass back as ``state``."""
        return {
            "model": {f"noise.{k}": v for k, v in self.noise.state_dict().items()}
            | {f"generators.{k}": v for k, v in self.generators.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": self.rng.get_state(),
            "history": [dict(h) for h in self.history],
            "config": asdict(self.config),
        } | ({"best": self.best} if self.best is not None else {})

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: str | torch.device = "cpu") -> Stage1Result:
        """Rebuild a result (for sampling or resuming) from :meth:`state_dict` output, without the data."""
        config = Stage1Config(**state["config"])
        unit_scale = state["model"]["noise.unit_scale"].cpu().numpy()
        n_conditions = state["model"]["generators.out.weight"].shape[0]
        device = torch.device(device)
        noise, generators, optimizer = _build(n_conditions, unit_scale, config, device)
        nn.ModuleDict({"noise": noise, "generators": generators}).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng = torch.Generator(device=device)
        rng.set_state(state["rng"])
        generators.eval()
        return cls(noise, generators, [dict(h) for h in state["history"]], config, int(state["step"]), optimizer, rng,
                   state.get("best"))

    @torch.inference_mode()
    def sample_latents(self, n_per_condition: int, seed: int = 0, chunk: int = 2000) -> list[np.ndarray]:
        """Draw latent states s from every condition's generator.

        Parameters
        ----------
        n_per_condition
            Samples per condition (METHOD.md: 10000 before stage 2).
        seed
            Seed of the latent draws (independent of the training RNG).
        chunk
            Samples per condition per forward pass (bounds memory at K · chunk · d floats).

        Returns
        -------
        One ``(n_per_condition, d)`` float32 array per condition, in input order.
        """
        p = self.generators.out.weight
        gen = torch.Generator(device=p.device).manual_seed(seed)
        parts = []
        for start in range(0, n_per_condition, chunk):
            parts.append(self.generators.sample(min(chunk, n_per_condition - start), gen).float().cpu())
        s = torch.cat(parts, dim=1).numpy()
        return [s[k] for k in range(s.shape[0])]


def _build(
    n_conditions: int, unit_scale: np.ndarray, config: Stage1Config, device: torch.device,
    dropout: float | np.ndarray = 0.05,
) -> tuple[ZIPNoise, StackedGenerators, torch.optim.Optimizer]:
    """Freshly initialised (seeded) measurement model, generators and optimiser."""
    noise = ZIPNoise(np.asarray(unit_scale), dropout).to(device)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(config.seed)
        generators = StackedGenerators(
            n_conditions, len(unit_scale), kind=config.generator, latent_dim=config.latent_dim, width=config.width,
            n_blocks=config.n_blocks, gene_hidden=config.gene_hidden, n_gene_blocks=config.n_gene_blocks,
        ).to(device)
    # Two groups: a logit has to travel O(1) and Adam moves it about lr per step, so at CPU step counts
    # the dropout logits need their own, larger rate.
    groups = [{"params": generators.parameters(), "lr": config.lr}, {"params": noise.parameters(), "lr": config.noise_lr}]
    return noise, generators, torch.optim.Adam(groups, betas=config.betas)


def _lr_at(step: int, config: Stage1Config) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to 0 at ``steps`` (METHOD.md §2)."""
    return warmup_cosine(step, peak=config.lr, warmup=config.warmup, total=config.steps)


def _warm_start_moments(
    counts: list[np.ndarray], unit_scale: np.ndarray, dropout: float | np.ndarray, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-condition noise-corrected latent moments (at the initial π), covariance shrunk, for the warm start."""
    moments = [naive_latent_moments(y, unit_scale, dropout) for y in counts]
    return np.stack([m for m, _ in moments]), shrink * np.stack([c for _, c in moments])


#: units of stage 2's input per gene (:func:`standardize`): METHOD's spread over all conditions, or [ours] the
#: pooled spread within a condition, alone or times one factor for every gene
STANDARDIZE_SCALES = ("all", "within", "within_median")


def check_scale(name: str) -> None:
    """Refuse a unit of stage 2's input that is not one of :data:`STANDARDIZE_SCALES`."""
    if name not in STANDARDIZE_SCALES:
        raise ConfigError(f"scale must be one of {', '.join(STANDARDIZE_SCALES)}; got {name!r}")


#: latent draws × cells per block of the validation estimate (bounds its (K', B, M) log-likelihood matrix)
_VAL_BLOCK = 1 << 22


@torch.no_grad()
def validation_nll(noise: ZIPNoise, generators: StackedGenerators, val: list[torch.Tensor], n_samples: int,
                   seed: int) -> float:
    """Held-out cells' negative log marginal likelihood under their condition's generator.

    ``−log p(y) ≈ −[logsumexp_m log p(y | s_m) − log M]`` with ``M = n_samples`` draws ``s_m`` of the
    cell's own condition: the T = 1 term of the training objective, on cells it never saw. The draws
    come from a generator seeded with ``seed`` at every call, so two evaluations of the same weights
    agree exactly and two checkpoints are compared on the same draws.

    Parameters
    ----------
    val
        One ``(n_k, d)`` count tensor per condition (``n_k`` may be 0), on the generators' device.

    Returns
    -------
    Mean over all held-out cells, nats per cell; NaN when there are none.
    """
    device = generators.out.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    total, n = 0.0, 0
    for k, y in enumerate(val):
        if len(y) == 0:
            continue
        s = generators.sample(n_samples, gen, torch.tensor([k], device=device))[0]  # (M, d)
        step = max(1, _VAL_BLOCK // n_samples)
        for start in range(0, len(y), step):
            ll = noise.log_likelihood_matrix(y[start : start + step], s)  # (B, M)
            total += float(-(torch.logsumexp(ll, dim=-1) - np.log(n_samples)).sum())
        n += len(y)
    return total / n if n else float("nan")


def fit_stage1(
    counts: list[np.ndarray],
    unit_scale: np.ndarray,
    config: Stage1Config,
    *,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    state: dict[str, Any] | None = None,
    max_seconds: float | None = None,
    val_counts: list[np.ndarray] | None = None,
) -> Stage1Result:
    """Fit the per-condition generators and the dropout logits jointly (METHOD.md §2, stage 1).

    Parameters
    ----------
    counts
        One ``(n_q, d)`` raw-count array per condition (the order defines the generator index).
    unit_scale
        ``(d,)`` fixed u (:func:`~lcd_core.module._noise.unit_scale_from_counts` on control cells).
    config
        Settings.
    device
        Torch device.
    progress
        Called with a :class:`~lcd_core.train.Progress` (stage ``"stage1"``, the history entry as its
        ``record``) every ``config.log_every`` steps.
    state
        A :meth:`Stage1Result.state_dict` to resume from (same data and config).
    max_seconds
        Stop after this much wall time; the result can be resumed through its ``state_dict()``.
    val_counts
        Held-out cells, one ``(n_k, d)`` count array per condition (same order; ``n_k`` may be 0). Every
        ``log_every`` steps their :func:`validation_nll` is logged as ``val_loss``, and the weights with
        the lowest one are kept (:attr:`Stage1Result.best`) and returned once all steps ran.

    Returns
    -------
    :class:`Stage1Result`.
    """
    if not counts:
        raise ConfigError("fit_stage1 needs at least one condition's counts.")
    d = counts[0].shape[1]
    if any(y.ndim != 2 or y.shape[1] != d or len(y) == 0 for y in counts) or np.shape(unit_scale) != (d,):
        raise ConfigError("Every condition needs a non-empty (n_q, d) count array with one unit scale per gene.")
    K, device = len(counts), torch.device(device)
    if val_counts is not None and (len(val_counts) != K or any(np.ndim(v) != 2 or np.shape(v)[1] != d for v in val_counts)):
        raise ConfigError("val_counts needs one (n_k, d) count array per condition, over the same genes.")
    rng = torch.Generator(device=device).manual_seed(config.seed)  # batches and latent draws

    # All cells in one tensor; condition k owns rows offsets[k] : offsets[k] + n_cells[k].
    cells = torch.as_tensor(np.concatenate(counts), dtype=torch.float32, device=device)
    n_cells = torch.tensor([len(y) for y in counts], device=device)
    offsets = torch.cumsum(n_cells, 0) - n_cells

    dropout = config.dropout_init
    if state is None and dropout is None:
        dropout = estimate_dropout(counts, unit_scale)
    noise, generators, optimizer = _build(K, unit_scale, config, device, 0.05 if dropout is None else dropout)
    model = nn.ModuleDict({"noise": noise, "generators": generators})
    step, history, best = 0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), [dict(h) for h in state["history"]]
        rng.set_state(state["rng"])
        best = state.get("best")
    elif config.init == "moments":
        generators.init_from_moments(
            *_warm_start_moments(counts, unit_scale, dropout, config.init_cov_shrink)
        )
    val = None
    if val_counts is not None and sum(len(v) for v in val_counts):
        val = [torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device) for v in val_counts]

    t0 = time.perf_counter()
    model.train()
    while step < config.steps:
        lr = _lr_at(step, config)
        for group, peak in zip(optimizer.param_groups, (config.lr, config.noise_lr)):
            group["lr"] = lr * peak / config.lr  # the same schedule shape for both groups
        # Conditions of this step: all of them by default. A condition left out still has a (zero) gradient
        # in the stacked tensors, so with β1 > 0 Adam's momentum would keep moving it (METHOD.md §2 notes);
        # with the paper's β1 = 0 its update is exactly 0 and only its second-moment estimate decays.
        index = None
        if config.conditions_per_step is not None and config.conditions_per_step < K:
            index = torch.randperm(K, generator=rng, device=device)[: config.conditions_per_step]
        active = torch.arange(K, device=device) if index is None else index
        # B cells per active condition, drawn with replacement: (K', B, d)
        draw = torch.rand(len(active), config.batch_size, generator=rng, device=device)
        y = cells[offsets[active, None] + (draw * n_cells[active, None]).long()]
        s = generators.sample(config.n_samples, rng, index)  # (K', M, d)
        out = tempered_evidence_loss(noise.log_likelihood_matrix(y, s), config.temps)

        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % config.log_every == 0 or step == config.steps:
            record = {"step": step, "lr": lr, "loss": out.loss.item(), "grad_norm": grad_norm.item()}
            record |= out.components | {"seconds": time.perf_counter() - t0}
            if val is not None:
                model.eval()
                # its own seed: the validation draws never touch the training RNG (resumes stay exact)
                record["val_loss"] = validation_nll(noise, generators, val, config.n_samples, config.seed + 1)
                model.train()
                if np.isfinite(record["val_loss"]) and (best is None or record["val_loss"] < best["val_loss"]):
                    best = {"step": step, "val_loss": record["val_loss"],
                            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            history.append(record)
            if progress is not None:
                progress(Progress("stage1", step, config.steps, record))
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    model.eval()
    if best is not None and step >= config.steps:
        model.load_state_dict(best["model"])
    return Stage1Result(noise, generators, history, config, step, optimizer, rng, best)


def standardize(
    latents: list[np.ndarray], control_index: int = 0, *, scale: str = "all"
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Standardise stage-1 latents for stage 2: x = (s − μ_ctrl) / σ (METHOD.md §2: σ = σ_all).

    Parameters
    ----------
    latents
        One ``(n_q, d)`` array of latent samples per condition.
    control_index
        Which entry is the control condition.
    scale
        ``"all"`` (METHOD.md): σ_all, each gene's std pooled over all conditions' samples. [ours] ``"within"``:
        each gene's pooled within-condition std, sqrt(mean_q var_q), so that a gene the perturbations move
        (whose σ_all is mostly the shifts between conditions) has the same unit spread within a condition as
        any other (docs/benchmarks.md, "Norman's direction"). [ours] ``"within_median"``: "within"'s units times
        one factor for every gene, the median over genes of σ_all / σ_within, so that the median gene keeps
        METHOD's unit: where the perturbations move most genes (simulated screens: median ratio 1.6–2) the
        data stays at the unit scale EDM's preconditioning assumes, where they move few (real screens: ~1) it
        is "within" (docs/benchmarks.md, "Stage 2's units").

    Returns
    -------
    ``(standardised list, mu_ctrl (d,), sd (d,))``, with 0 in ``sd`` replaced by 1 so a constant gene stays
    finite.
    """
    check_scale(scale)
    n = np.array([len(s) for s in latents], dtype=np.float64)[:, None]
    # one float64 copy of one condition at a time, read once for both moments
    moments = [(a.mean(0), a.var(0)) for a in (np.asarray(s, dtype=np.float64) for s in latents)]
    means, variances = (np.stack(m) for m in zip(*moments))
    # the spread over all samples by the law of total variance: no concatenated copy of every condition's latents
    grand = (n * means).sum(0) / n.sum()
    sd_all = np.sqrt((n * (variances + (means - grand) ** 2)).sum(0) / n.sum())
    if scale == "all":
        sd = sd_all
    else:
        sd = np.sqrt(variances.mean(0))
        if scale == "within_median":
            ok = sd > 0  # a gene without spread within its conditions has no finite ratio
            sd = sd * (np.median(sd_all[ok] / sd[ok]) if ok.any() else 1.0)
    mu_ctrl = means[control_index]
    sd = np.where(sd > 0, sd, 1.0)
    return [((s - mu_ctrl) / sd).astype(np.asarray(s).dtype) for s in latents], mu_ctrl, sd

"""Training loop of stage 2: denoising score matching on standardised latent samples (METHOD.md §2)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._progress import Progress, ProgressFn
from ._schedule import warmup_cosine
from ._stage1 import check_scale
from ..errors import ConfigError
from ..module._score import ScoreNet, check_preconditioning, dsm_loss


@dataclass
class Stage2Config:
    """Settings of stage 2 (defaults: METHOD.md §2)."""

    # architecture
    hidden: int = 1024  # width of each hidden layer (2048 at genome scale)
    n_layers: int = 2  # number of hidden layers
    emb_dim: int = 1024  # perturbation embedding size E
    level_emb_dim: int = 128  # sinusoidal level features
    # noise schedule
    n_levels: int = 30  # number of trained σ levels
    sigma_max: float = 10.0  # largest σ (standardised units)
    sigma_min: float = 0.01  # smallest σ; the drift is the score here
    sigma_out: float = 1.0  # [ours] D = x' − σ²/√(σ²+σ₀²)·F; 0 gives METHOD's D = x' − σF (see ScoreNet)
    # [ours] "edm": the denoiser's skip and output scale at large σ as Karras et al. 2022 (see ScoreNet); "ve": METHOD's
    preconditioning: str = "edm"
    # units of each gene (lcd_core.train.standardize): "all" is METHOD's σ_all; [ours] "within" the pooled
    # within-condition std; [ours] "within_median" the same times one factor, the median gene's σ_all / σ_within
    scale: str = "within_median"
    # optimisation
    lr: float = 1e-3  # peak AdamW learning rate, cosine-decayed to 0 over `steps`
    warmup_steps: int = 0  # linear warm-up before the cosine
    weight_decay: float = 0.3  # AdamW decoupled weight decay
    batch_size: int = 8192  # samples per step
    steps: int = 50_000  # optimiser steps (100k at genome scale)
    mixed_conditions: bool = True  # True: samples from all conditions per batch; False: one random condition
    clip: float = 1.0  # gradient-norm clipping (≤ 0: off)
    seed: int = 0  # initialisation, batches, levels and noise
    log_every: int = 100  # steps between history entries / progress calls

    def __post_init__(self):
        for name in ("hidden", "n_layers", "emb_dim", "n_levels", "batch_size", "steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Stage2Config.{name} must be ≥ 1, got {getattr(self, name)}.")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"Need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}.")
        check_preconditioning(self.preconditioning)  # here, before stage 1 spends its minutes
        check_scale(self.scale)


@dataclass
class Stage2Result:
    """Output of :func:`fit_stage2`.

    Attributes
    ----------
    net
        The trained :class:`~lcd_core.module.ScoreNet` in ``eval()`` mode.
    history
        One dict per logged step: ``step``, ``loss`` (mean DSM loss since the last entry), ``lr``, ``seconds``
        and, with validation samples, ``val_loss`` (:func:`validation_dsm`).
    done
        Whether all ``config.steps`` ran (``False`` when stopped by ``max_seconds``), as
        :attr:`Stage1Result.done`.
    best_step, best_val_loss
        With validation samples: the logged step with the lowest validation loss and that loss; once
        done, ``net`` holds that step's weights (:meth:`state_dict` keeps the last ones, and them under
        ``best``).
    checkpoint
        What :meth:`state_dict` returns.
    """

    net: ScoreNet
    history: list[dict] = field(default_factory=list)
    done: bool = True
    best_step: int | None = None
    best_val_loss: float | None = None
    checkpoint: dict = field(default_factory=dict, repr=False)

    def state_dict(self) -> dict:
        """Resumable state, as :meth:`Stage1Result.state_dict`: plain containers of tensors, ints and
        floats (``torch.save``-able, loadable with ``weights_only=True``); pass it back as ``state=``."""
        return self.checkpoint

    def use_best(self) -> None:
        """Load the best validation weights into ``net`` (a stage cut short by time ends on them too)."""
        if "best" in self.checkpoint:
            self.net.load_state_dict(self.checkpoint["best"]["net"])


@torch.no_grad()
def validation_dsm(net: ScoreNet, val: torch.Tensor, val_cond: torch.Tensor, perts: torch.Tensor, *, seed: int,
                   batch_size: int) -> float:
    """Mean denoising loss of held-out samples (the training objective on data the net never saw).

    The levels and the noise come from a generator seeded with ``seed`` at every call: two checkpoints
    are compared on identical noisy inputs, so the difference is the weights', not the draw's.

    Parameters
    ----------
    val
        ``(n, d)`` held-out standardised samples.
    val_cond
        ``(n,)`` their condition indices (rows of ``perts``).
    perts
        ``(n_cond, P)`` multi-hot of every condition.
    """
    gen = torch.Generator(device=val.device).manual_seed(seed)
    total = 0.0
    for start in range(0, len(val), batch_size):
        sl = slice(start, start + batch_size)
        total += float(dsm_loss(net, val[sl], perts, gen, index=val_cond[sl]).sum())
    return total / max(len(val), 1)


def get_lr(step: int, config: Stage2Config) -> float:
    """Linear warm-up, then cosine decay from ``config.lr`` to 0 at ``config.steps``."""
    return warmup_cosine(step, peak=config.lr, warmup=config.warmup_steps, total=config.steps)


def fit_stage2(
    x: list[np.ndarray],
    pert: np.ndarray,
    config: Stage2Config | None = None,
    *,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    state: dict | None = None,
    max_seconds: float | None = None,
    val_x: list[np.ndarray] | None = None,
) -> Stage2Result:
    """Fit the noise-conditional score network by denoising score matching.

    Parameters
    ----------
    x
        One ``(n_q, d)`` array per condition: standardised latent samples (METHOD.md §2,
        ``x = (s − μ_ctrl) / σ_all``).
    pert
        ``(n_cond, P)`` multi-hot of each condition's targets (control: a row of zeros). Genes with an
        all-zero column get the mean embedding at prediction time.
    config
        :class:`Stage2Config`; default settings when ``None``.
    device
        Torch device for the net and the data.
    progress
        Called with a :class:`~lcd_core.train.Progress` (stage ``"stage2"``, the history entry as its
        ``record``) every ``config.log_every`` steps.
    state
        A previous result's :meth:`~Stage2Result.state_dict` to resume from (same data and config).
    max_seconds
        Stop after this much wall time (the state stays resumable).
    val_x
        Held-out samples, one ``(n_k, d)`` array per condition (``n_k`` may be 0), standardised like
        ``x``. Every ``log_every`` steps their :func:`validation_dsm` is logged as ``val_loss``; the
        weights with the lowest one are kept and returned once finished.

    Returns
    -------
    :class:`Stage2Result`.
    """
    config = Stage2Config() if config is None else config
    pert_np = np.asarray(pert, dtype=np.float32)
    if pert_np.ndim != 2 or pert_np.shape[0] != len(x):
        raise ConfigError(f"`pert` must be (n_cond={len(x)}, P), got shape {pert_np.shape}.")
    d = int(np.asarray(x[0]).shape[1])
    # All conditions in one tensor; a sample is (condition, row) -> offsets[c] + row.
    data = torch.as_tensor(np.concatenate([np.asarray(xi, dtype=np.float32) for xi in x]), device=device)
    sizes = torch.tensor([len(xi) for xi in x], device=device)
    offsets = torch.cumsum(sizes, 0) - sizes
    perts = torch.as_tensor(pert_np, device=device)
    val = val_cond = None
    if val_x is not None:
        if len(val_x) != len(x) or any(np.ndim(v) != 2 or np.shape(v)[1] != d for v in val_x):
            raise ConfigError(f"`val_x` needs one (n_k, {d}) array per condition ({len(x)}).")
        if sum(len(v) for v in val_x):
            val = torch.as_tensor(np.concatenate([np.asarray(v, dtype=np.float32) for v in val_x]), device=device)
            val_cond = torch.repeat_interleave(torch.arange(len(val_x), device=device),
                                               torch.tensor([len(v) for v in val_x], device=device))
    del x, pert, val_x

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(config.seed)
        net = ScoreNet(
            d, perts.shape[1], hidden=config.hidden, n_layers=config.n_layers, emb_dim=config.emb_dim,
            level_emb_dim=config.level_emb_dim, n_levels=config.n_levels, sigma_max=config.sigma_max,
            sigma_min=config.sigma_min, sigma_out=config.sigma_out, preconditioning=config.preconditioning,
        ).to(device)
    net.trained_mask.copy_(perts.sum(0) > 0)
    # the fused update is one kernel instead of a dozen per parameter: 3–8 → 0.9 ms a step on the 2-core CPU
    # at 500 genes, where a whole step takes ~60 ms (docs/benchmarks.md, "Training time")
    fused = True if torch.device(device).type in ("cpu", "cuda") else None
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    step, history, best = 0, [], None
    if state is not None:  # resume
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        step, history = int(state["step"]), list(state["history"])
        best = state.get("best")

    def draw_batch() -> tuple[torch.Tensor, torch.Tensor]:
        n = config.batch_size
        if config.mixed_conditions:
            cond = torch.randint(0, len(sizes), (n,), generator=gen, device=device)
        else:  # the paper: one random condition per step
            cond = torch.randint(0, len(sizes), (1,), generator=gen, device=device).expand(n)
        row = (torch.rand(n, generator=gen, device=device) * sizes[cond]).long()
        return data[offsets[cond] + row], cond

    net.train()
    t0, running, n_running = time.monotonic(), 0.0, 0
    while step < config.steps:
        if max_seconds is not None and time.monotonic() - t0 > max_seconds:
            break
        # learning rate of this step
        lr = get_lr(step, config)
        for group in opt.param_groups:
            group["lr"] = lr
        # DSM step: loss, backward, clip, step
        xb, cond = draw_batch()
        out = net.loss(xb, perts, gen, index=cond)
        out.loss.backward()
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        running += out.components["dsm"]
        n_running += 1
        # log
        if step % config.log_every == 0 or step == config.steps:
            entry = {"step": step, "loss": running / n_running, "lr": lr, "seconds": time.monotonic() - t0}
            if val is not None:
                net.eval()
                # its own seed: validation never draws from the training generator (resumes stay exact)
                entry["val_loss"] = validation_dsm(net, val, val_cond, perts, seed=config.seed + 1,
                                                   batch_size=config.batch_size)
                net.train()
                if np.isfinite(entry["val_loss"]) and (best is None or entry["val_loss"] < best["val_loss"]):
                    best = {"step": step, "val_loss": entry["val_loss"],
                            "net": {k: v.detach().clone() for k, v in net.state_dict().items()}}
            history.append(entry)
            running, n_running = 0.0, 0
            if progress is not None:
                progress(Progress("stage2", step, config.steps, entry))

    net.eval()
    state = {
        "net": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "opt": opt.state_dict(),
        "rng": gen.get_state(),
        "step": step,
        "history": history,
        "config": asdict(config),
    } | ({"best": best} if best is not None else {})
    done = step >= config.steps
    if done and best is not None:
        net.load_state_dict(best["net"])
    return Stage2Result(net=net, history=history, checkpoint=state, done=done,
                        best_step=None if best is None else int(best["step"]),
                        best_val_loss=None if best is None else float(best["val_loss"]))

"""Stage 2 of LCD: the noise-conditional score network and its denoising score-matching loss (METHOD.md §2)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..nn._embeddings import SinusoidalEmbedding
from ..nn._mlp import MLP
from ..sde import VESchedule
from ._output import LossOutput

#: the denoiser's preconditionings (:class:`ScoreNet`)
PRECONDITIONINGS = ("ve", "edm")


def check_preconditioning(name: str) -> None:
    """Refuse a preconditioning that is not one of :data:`PRECONDITIONINGS`."""
    if name not in PRECONDITIONINGS:
        raise ConfigError(f"preconditioning must be one of {', '.join(PRECONDITIONINGS)}; got {name!r}")


class ScoreNet(torch.nn.Module):
    """Noise- and perturbation-conditional score ``s_θ(x̃, σ, T)`` in standardised latent space.

    A thin wrapper (EDM's ``EDMPrecond`` pattern) around a plain :class:`~lcd_core.nn.MLP` ``F``:

    - input scaling ``x' = x̃ / sqrt(1 + σ²)``;
    - level embedding: sinusoidal features of the level index → Dense–tanh–Dense, added to the first
      hidden pre-activation; between trained levels the embedding is linearly interpolated;
    - perturbation ``e_T = multi-hot @ E`` (``E`` is ``(P, emb_dim)``, init ``N(0, 0.01²)``), entering
      every hidden pre-activation as ``U_l e_T + c_l`` (METHOD.md §1);
    - denoiser ``D = c_skip(σ) x̃ − c_out(σ) F``, score ``(D − x̃) / σ²``.

    Two choices shape ``D``. ``sigma_out = σ₀`` sets the small levels: ``σ₀ = 0`` is METHOD.md's ``c_out = σ``,
    which makes ``F`` an ε-prediction whose error the score amplifies by ``1/σ`` (100× at σ_min), so the
    drift ``s(x, σ_min)`` is poor; [ours] ``σ₀ > 0`` multiplies ``c_out`` by ``σ / sqrt(σ² + σ₀²)``, making
    ``F`` an O(1) score prediction there (on a linear Gaussian screen the relative error of the learned score
    at σ_min falls from 2.4 to 0.19 with σ₀ = 1, tests/test_score.py).

    ``preconditioning`` sets the large levels:

    - ``"ve"`` (METHOD.md): ``c_skip = 1 / sqrt(1 + σ²)``, ``c_out = σ`` there. ``F`` corrects a skip that
      keeps too much of the noisy input, and its error reaches ``D`` multiplied by σ (2× at σ = 2, 10× at
      σ_max): the denoiser contracts too little at the middle and large levels, and the generated cells of
      each condition come out too wide (Norman: 4.6× the variance of stage 1's states in the top genes).
    - [ours] ``"edm"`` (Karras et al. 2022, with the data's unit scale): ``c_skip = 1 / (1 + σ²)``,
      ``c_out → 1`` at large σ, so ``F`` predicts the clean state there and its error is not amplified;
      trained with EDM's loss weight (:func:`dsm_loss`). Same samplers; on Norman the generated spread falls
      to 1.7× and the decoded training shifts' r rises from 0.63 to 0.84 (docs/benchmarks.md, "Preconditioning").

    Parameters
    ----------
    n_genes
        Latent dimension ``d``.
    n_perts
        Number ``P`` of genes that can be perturbed (columns of the multi-hot).
    hidden, n_layers
        Backbone width and depth (METHOD.md: 1024, 2).
    emb_dim
        Perturbation embedding size ``E`` (1024).
    level_emb_dim
        Size of the sinusoidal level features.
    n_levels, sigma_max, sigma_min
        The noise schedule (:class:`~lcd_core.sde.VESchedule`).
    sigma_out
        ``σ₀`` of the output scaling at small σ; 0 (the default, and what runs written before it existed load
        with) is METHOD.md's.
    preconditioning
        ``"ve"`` (the default, and what runs written before it existed load with: METHOD.md's
        ``D = x' − σF`` when ``sigma_out = 0``) or ``"edm"``.

    Examples
    --------
    >>> net = ScoreNet(20, 5, hidden=64, emb_dim=16)
    >>> x, pert = torch.randn(8, 20), torch.zeros(1, 5)
    >>> net.score(x, 0.01, pert).shape          # float → σ
    torch.Size([8, 20])
    >>> net.score(x, 29, pert).shape            # int → trained level index
    torch.Size([8, 20])
    """

    def __init__(
        self,
        n_genes: int,
        n_perts: int,
        *,
        hidden: int = 1024,
        n_layers: int = 2,
        emb_dim: int = 1024,
        level_emb_dim: int = 128,
        n_levels: int = 30,
        sigma_max: float = 10.0,
        sigma_min: float = 0.01,
        sigma_out: float = 0.0,
        preconditioning: str = "ve",
    ):
        super().__init__()
        self.init_params = dict(
            n_genes=n_genes, n_perts=n_perts, hidden=hidden, n_layers=n_layers, emb_dim=emb_dim,
            level_emb_dim=level_emb_dim, n_levels=n_levels, sigma_max=sigma_max, sigma_min=sigma_min,
            sigma_out=sigma_out, preconditioning=preconditioning,
        )
        check_preconditioning(preconditioning)
        self.sigma_out = float(sigma_out)
        self.preconditioning = preconditioning
        self.n_genes, self.n_perts = int(n_genes), int(n_perts)
        self.sde = VESchedule(n_levels, sigma_max, sigma_min)
        self.backbone = MLP(n_genes, n_genes, hidden=hidden, n_layers=n_layers, activation="tanh")
        self.level_features = SinusoidalEmbedding(level_emb_dim, max_period=10.0 * n_levels)
        self.level_mlp = torch.nn.Sequential(
            torch.nn.Linear(level_emb_dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden)
        )
        self.pert_emb = torch.nn.Parameter(0.01 * torch.randn(n_perts, emb_dim))  # E, METHOD.md §1
        self.pert_proj = torch.nn.ModuleList(torch.nn.Linear(emb_dim, hidden) for _ in range(n_layers))  # U_l, c_l
        # genes perturbed in some training condition; the others read the mean embedding (set by the trainer)
        self.register_buffer("trained_mask", torch.ones(n_perts, dtype=torch.bool))

    # -- conditioning ---------------------------------------------------------------------------------
    def embedding_for(
        self, pert_multihot: torch.Tensor, trained_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturbation embeddings ``e_T = Σ_{j∈T} e_j`` (METHOD.md §1).

        Parameters
        ----------
        pert_multihot
            ``(n, P)`` 0/1 (float or bool); a row of zeros is control.
        trained_mask
            ``(P,)`` bool, genes perturbed in training; default the net's ``trained_mask`` buffer.
            Every other gene gets the mean of the trained embeddings.

        Returns
        -------
        ``(emb, used_mean)``: ``(n, emb_dim)`` embeddings and a ``(P,)`` bool mask of the requested genes
        that fell back to the mean embedding (for the UI to flag).
        """
        mask = self.trained_mask if trained_mask is None else trained_mask.to(self.trained_mask.device).bool()
        pert = pert_multihot.to(self.pert_emb.dtype)
        table = self.pert_emb
        if not bool(mask.all()):
            mean = self.pert_emb[mask].mean(0) if bool(mask.any()) else torch.zeros_like(self.pert_emb[0])
            table = torch.where(mask[:, None], self.pert_emb, mean[None, :])
        used_mean = (pert != 0).any(0) & ~mask
        return pert @ table, used_mean

    def condition_shifts(self, pert: torch.Tensor) -> list[torch.Tensor]:
        """``U_l e_T + c_l`` of every row of ``pert`` ``(n_cond, P)``, one ``(n_cond, hidden)`` per hidden layer.

        Pass the result as ``shifts=`` to :meth:`score` when the same conditions are evaluated many times
        (fixed points of K conditions): at d = K = 1000 these projections cost as much as the backbone."""
        dtype, dev = self.pert_emb.dtype, self.pert_emb.device
        emb, _ = self.embedding_for(pert.to(device=dev, dtype=dtype))
        return [proj(emb) for proj in self.pert_proj]

    def _pert_shifts(self, pert: torch.Tensor, index: torch.Tensor | None) -> list[torch.Tensor]:
        """``U_l e_T + c_l`` for every hidden layer, computed once per distinct condition."""
        inverse = index
        if index is None and pert.shape[0] > 1:
            # many chains usually share few conditions: project each distinct row once
            pert, inverse = torch.unique(pert, dim=0, return_inverse=True)
        shifts = self.condition_shifts(pert)
        return shifts if inverse is None else [s[inverse] for s in shifts]

    def _level_shift(self, t: torch.Tensor) -> torch.Tensor:
        """Level embedding at fractional index ``t`` (any shape ``(n,)`` or ``()``): linear interpolation of
        the embeddings of the two neighbouring trained levels (exact at integer ``t``)."""
        grid = torch.arange(self.sde.n_levels, device=self.pert_emb.device)
        table = self.level_mlp(self.level_features(grid))  # (n_levels, hidden); cheaper than per sample
        lo, hi, w = self.sde.interp_weights(t.detach().cpu())
        lo, hi = lo.to(table.device), hi.to(table.device)
        w = w.to(device=table.device, dtype=table.dtype).unsqueeze(-1)
        return (1 - w) * table[lo] + w * table[hi]

    def _resolve(self, sigma_or_level, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Map a σ (floating) or a trained level index (integer) to ``(sigma, t)`` float64 tensors."""
        v = torch.as_tensor(sigma_or_level)
        if v.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            t = v.to(torch.float64).cpu()
            return self.sde.sigma_of(t), t
        sigma = v.to(torch.float64).cpu()
        return sigma, self.sde.level_of(sigma)

    # -- forward --------------------------------------------------------------------------------------
    def denoise(
        self, x: torch.Tensor, sigma_or_level, pert: torch.Tensor, *, index: torch.Tensor | None = None,
        shifts: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Denoiser ``D(x̃; σ, T) = c_skip x̃ − c_out F(x', σ, e_T)``, ``x' = x̃ / sqrt(1 + σ²)`` (class docstring).

        Parameters
        ----------
        x
            Noisy standardised latents ``x̃``, ``(n, d)``.
        sigma_or_level
            Floating scalar/``(n,)``: σ (standardised units, read between trained levels by interpolating
            the level embedding). Integer scalar/``(n,)``: a trained level index (0 = ``sigma_max``).
        pert
            Multi-hot ``(n, P)``, or ``(1, P)`` broadcast to all rows, or ``(n_cond, P)`` with ``index``.
        index
            Optional ``(n,)`` long: row of ``pert`` for each sample.
        shifts
            Optional :meth:`condition_shifts` of ``pert``, computed once by the caller (needs ``index``).

        Returns
        -------
        ``(n, d)`` estimate of the clean ``x``, in ``x``'s dtype.
        """
        dtype, dev = self.pert_emb.dtype, self.pert_emb.device
        sigma, t = self._resolve(sigma_or_level, dev)
        s = sigma.to(device=dev, dtype=dtype)
        s_col = s.unsqueeze(-1) if s.ndim else s
        scale_in = torch.sqrt(1 + s_col**2)  # the noisy input's scale at unit data scale
        x_in = x.to(device=dev, dtype=dtype) / scale_in  # input scaling: unit-scale input
        if shifts is not None:
            if index is None:
                raise ValueError("`shifts` are per row of `pert`: pass `index` with them")
            shifts = [s[index.to(dev)] for s in shifts]
        else:
            shifts = self._pert_shifts(pert.to(device=dev, dtype=dtype), None if index is None else index.to(dev))
        shifts[0] = shifts[0] + self._level_shift(t)
        f = self.backbone(x_in, shifts)
        c_out = s_col if self.sigma_out == 0 else s_col**2 / torch.sqrt(s_col**2 + self.sigma_out**2)
        skip = x_in
        if self.preconditioning == "edm":
            skip = x_in / scale_in  # c_skip = 1 / (1 + σ²)
            c_out = c_out / scale_in  # → 1 at large σ: F predicts the clean state
        return (skip - c_out * f).to(device=x.device, dtype=x.dtype)

    def score(
        self, x: torch.Tensor, sigma_or_level, pert: torch.Tensor, *, index: torch.Tensor | None = None,
        shifts: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Score ``s_θ(x̃, σ, T) = (D − x̃) / σ²`` (METHOD.md §2); arguments as :meth:`denoise`.

        This is the ``score_fn(x, sigma, pert)`` the samplers of :mod:`lcd_core.sampling` take, and
        ``score(x, sigma_min, T)`` is the LCD drift ``f_T(x)``.
        """
        sigma, _ = self._resolve(sigma_or_level, x.device)
        s = sigma.to(device=x.device, dtype=x.dtype)
        s2 = (s.unsqueeze(-1) if s.ndim else s) ** 2  # in x's dtype: float64 chains keep their precision
        return (self.denoise(x, sigma_or_level, pert, index=index, shifts=shifts) - x) / s2

    forward = score

    def loss(
        self, x: torch.Tensor, pert: torch.Tensor, generator: torch.Generator | None = None, *,
        index: torch.Tensor | None = None,
    ) -> LossOutput:
        """Mean DSM loss over a batch, as a :class:`LossOutput` for the trainer."""
        per_sample = dsm_loss(self, x, pert, generator, index=index)
        loss = per_sample.mean()
        return LossOutput(loss=loss, components={"dsm": float(loss.detach())})


def dsm_loss(
    net: ScoreNet, x: torch.Tensor, pert: torch.Tensor, generator: torch.Generator | None = None, *,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising score-matching loss per sample (METHOD.md §2; Vincent 2011, weighted as Song & Ermon 2019).

    A level is drawn uniformly per sample, ``x̃ = x + σ ε``, and the loss is
    ``½ ‖D(x̃; σ, T) − x‖² / (d σ²)`` = ``½ σ² mean_g (s_θ + ε/σ)²``; with the ``"edm"`` preconditioning
    weighted by ``1 + σ²`` as well (EDM's λ(σ) = (σ² + 1)/σ² at unit data scale). That weight gives every
    level the same weight in ``F``'s own units as ``"ve"`` does: without it the large levels, where ``c_out``
    falls from σ to 1, learn σ² times more slowly, and a short training learns a perturbation's shift at
    half its size (docs/benchmarks.md, "Preconditioning").

    Parameters
    ----------
    net
        The score network.
    x
        Clean standardised latents, ``(n, d)``.
    pert
        Multi-hot ``(n, P)`` or ``(n_cond, P)`` with ``index``.
    generator
        Source of the levels and noise (on ``x``'s device).

    Returns
    -------
    ``(n,)`` per-sample losses.
    """
    n = x.shape[0]
    level = torch.randint(0, net.sde.n_levels, (n,), generator=generator, device=x.device)
    sigma = net.sde.sigmas.to(x.device)[level].to(x.dtype)  # (n,)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_noisy = x + sigma[:, None] * eps
    denoised = net.denoise(x_noisy, level, pert, index=index)
    weight = (1 + sigma**2) / sigma**2 if net.preconditioning == "edm" else 1 / sigma**2
    return 0.5 * ((denoised - x) ** 2).mean(1) * weight

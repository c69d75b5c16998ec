"""The user-facing LCD model: genes, conditions and the wiring of the trained parts.

It owns what the neural modules must not know: gene names, condition labels, the standardisation of
stage 2 and how latent states become cells. Training lives in :mod:`lcd_core.model._train`; the
networks in :mod:`lcd_core.module`; the samplers in :mod:`lcd_core.sampling`. (Just over 400 lines on purpose:
the class users hold, with its persistence, in one file.)
"""

from __future__ import annotations

import difflib
import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._constants import KEYS
from .._device import resolve_device
from ..data._conventions import parse_label, targets_of
from ..errors import ConfigError, RunError
from ..module import QuantileDecoder, ScoreNet, ZIPNoise
from ..pp import normalize_log1p
from ..sampling import SAMPLERS, sample
from ._anchor import Anchors, anchored_log_scale
from ._extrapolation import extrapolation_notes
from ._run import MODEL_META, WEIGHTS, RunDir, atomic_write_json

#: format of model.json / model.safetensors; bump on any change of meaning
MODEL_FORMAT_VERSION = 4
#: formats this version still reads (1: before ScoreNet's ``sigma_out``, which then defaults to METHOD's 0;
#: 2: before the no-count mode's zero-aware decoder, whose runs then return stage 2's values unchanged;
#: 3: before ScoreNet's ``preconditioning``, which then defaults to METHOD's "ve")
READABLE_MODEL_FORMATS = (1, 2, 3, 4)


@dataclass
class Prediction:
    """Generated cells of one or more perturbations.

    Attributes
    ----------
    cells
        label → ``(n_cells, n_genes)`` float32, log1p CP10k (for a run without a measurement model:
        the screen's own normalised scale).
    latent
        label → ``(n_cells, n_genes)`` latent states ``s`` (state space, before the count model).
    unseen
        label → genes of that perturbation never perturbed in training (they use the mean embedding).
    extrapolation
        label → sentence, for the perturbations outside the training design (a gene never perturbed in
        training, a combination larger than any trained one; :func:`~lcd_core.model.extrapolation_notes`).
    params
        Sampler, budget and seed used.
    counts
        label → ``(n_cells, n_genes)`` float32 generated counts, for a run with a measurement model
        (what :func:`lcd_core.data.to_file_space` turns into a file's own space); empty otherwise.
    """

    cells: dict[str, np.ndarray]
    latent: dict[str, np.ndarray]
    unseen: dict[str, list[str]] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    extrapolation: dict[str, str] = field(default_factory=dict)

    def to_anndata(self, genes: list[str]):
        """One AnnData: ``.X`` log1p CP10k, ``obs["perturbation"]`` our labels, ``obsm["latent"]``;
        ``obs["extrapolation"]`` (bool) and ``uns["lcd_extrapolation"]`` (label → sentence, str) flag the
        perturbations outside the training design."""
        import anndata as ad
        import pandas as pd

        labels = list(self.cells)
        X = np.concatenate([self.cells[k] for k in labels]).astype(np.float32)
        obs = pd.DataFrame({
            KEYS.PERT: np.repeat(labels, [len(self.cells[k]) for k in labels]),
            "uses_mean_embedding": np.repeat([bool(self.unseen.get(k)) for k in labels],
                                             [len(self.cells[k]) for k in labels]),
            "extrapolation": np.repeat([k in self.extrapolation for k in labels], [len(self.cells[k]) for k in labels]),
        })
        obs.index = [f"pred{i}" for i in range(len(obs))]
        obs[KEYS.PERT] = obs[KEYS.PERT].astype("category")
        out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)))
        out.obsm["latent"] = np.concatenate([self.latent[k] for k in labels]).astype(np.float32)
        out.uns["lcd_prediction"] = {"params_json": json.dumps(self.params, sort_keys=True),
                                     "unseen_json": json.dumps(self.unseen, sort_keys=True)}
        out.uns["lcd_extrapolation"] = {k: str(v) for k, v in self.extrapolation.items()}
        return out


class LCD:
    """A trained latent causal diffusion model (METHOD.md §1–3).

    Parameters
    ----------
    genes
        The modelled genes, in the screen's order (length ``d``).
    pert_genes
        Genes that have a perturbation embedding (modelled genes, then targets that are not measured);
        the columns of the multi-hot the score network reads.
    conditions
        Training conditions (control first).
    net
        The trained :class:`~lcd_core.module.ScoreNet` over standardised latents.
    mu, sd
        ``(d,)`` standardisation: ``x = (s − mu) / sd`` (METHOD.md §2).
    noise
        The fitted :class:`~lcd_core.module.ZIPNoise`, or ``None`` for a run without a measurement model
        (stage 2 directly on normalised values).
    decoder
        [ours] For a run without a measurement model: the :class:`~lcd_core.module.QuantileDecoder` that
        maps stage 2's values of each gene onto the data's (exact zeros, ≥ 0). ``None``: the values are
        returned as generated (runs saved before it existed).
    info
        Provenance (data hash, split, config, seed), saved with the model.
    anchors
        [ours] Per-gene rate factors fitted on the measured training conditions (:mod:`._anchor`), or
        ``None``; used by ``predict(..., anchored=True)``.

    Examples
    --------
    >>> from lcd_core.data import read_screen
    >>> from lcd_core.model import LCD, get_preset, train
    >>> screen = read_screen("assets/demo_screen.h5ad")            # doctest: +SKIP
    >>> model = train(screen, "runs/demo", config=get_preset("demo"))  # doctest: +SKIP
    >>> pred = model.predict(["M1_G01+M1_G05"], n_cells=500)         # doctest: +SKIP
    >>> pred.cells["M1_G01+M1_G05"].shape                             # doctest: +SKIP
    (500, 150)
    """

    def __init__(self, *, genes, pert_genes, conditions, net: ScoreNet, mu, sd, noise: ZIPNoise | None,
                 info: dict | None = None, anchors: Anchors | None = None,
                 decoder: QuantileDecoder | None = None):
        self.genes = list(genes)
        self.pert_genes = list(pert_genes)
        self.conditions = list(conditions)
        self.net = net.eval()
        self.mu = np.asarray(mu, dtype=np.float64)
        self.sd = np.asarray(sd, dtype=np.float64)
        self.noise = noise.eval() if noise is not None else None
        self.decoder = decoder
        self.info = dict(info or {})
        self.anchors = anchors
        self._pert_index = {g: i for i, g in enumerate(self.pert_genes)}
        self._gene_index = {g: i for i, g in enumerate(self.genes)}

    # -- bookkeeping ------------------------------------------------------------------------------
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def has_measurement_model(self) -> bool:
        return self.noise is not None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def trained_genes(self) -> list[str]:
        """Genes perturbed in at least one training condition."""
        mask = self.net.trained_mask.cpu().numpy()
        return [g for g, m in zip(self.pert_genes, mask) if m]

    def multihot(self, label: str) -> tuple[np.ndarray, list[str]]:
        """``(P,)`` multi-hot of a perturbation label and the genes in it never perturbed in training.

        Raises
        ------
        ConfigError
            A gene the model has no embedding for (neither modelled nor a target of the screen), with
            close matches; an empty or repeated gene in the label.
        """
        targets = targets_of(parse_label(label))
        trained = set(self.trained_genes)
        for g in targets:
            if g not in self._pert_index:
                close = difflib.get_close_matches(g, self.pert_genes, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown gene {g!r} in perturbation {label!r}: it is neither a modelled gene "
                                  f"nor a target of the training screen{hint}")
        return multihot(targets, self._pert_index), [g for g in targets if g not in trained]

    def gene_index(self, genes) -> list[int]:
        missing = [g for g in genes if g not in self._gene_index]
        if missing:
            raise ConfigError(f"genes not modelled by this run: {', '.join(missing[:10])}")
        return [self._gene_index[g] for g in genes]

    # -- prediction -------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample_standardised(self, label: str, n_cells: int, *, sampler: str | None = None,
                            n_evals: int | None = None, seed: int = 0, guidance: float | None = None) -> np.ndarray:
        """``(n_cells, d)`` standardised latent states of one perturbation, from the learned diffusion
        (``guidance``: :func:`lcd_core.sampling.guided`'s weight; default: the run's, :attr:`guidance`)."""
        if n_cells < 1:
            raise ConfigError(f"the number of cells must be at least 1, got {n_cells}")
        name = sampler or self.info.get("sampler", "fast")
        if name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}")
        vec, _ = self.multihot(label)
        # the budget: network evaluations per cell for every sampler (lcd_core.sampling.sample); None: the
        # run's default (its config's sampler_evals), else the sampler's own
        budget = n_evals if n_evals is not None else self.info.get("sampler_evals")
        kw = {} if budget is None else {"n_evals": int(budget)}
        # one generator per (seed, label): a condition's cells do not depend on what else is requested. A CPU
        # generator: the samplers draw their noise on the CPU, so a seed gives the same cells on any device
        gen = torch.Generator().manual_seed(_label_seed(seed, label))
        x = sample(name, self.net.score, self.net.sde, torch.as_tensor(vec, device=self.device)[None, :],
                   n_cells, generator=gen, dim=self.n_genes, guidance=self.guidance if guidance is None else guidance,
                   **kw)
        return x.detach().cpu().double().numpy()

    @torch.inference_mode()
    def decode(self, latent: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """``(n, d)`` latent states → ``(n, d)`` float32 cells: counts through the ZIP model, then log1p
        CP10k (METHOD.md §3). Without a measurement model the states are the screen's normalised values:
        the zero-aware decoder maps them onto the data's domain (exact zeros, ≥ 0; README "No-count mode")."""
        if self.noise is None:
            if self.decoder is not None:
                return self.decoder(latent)
            return latent.astype(np.float32)
        return np.asarray(normalize_log1p(self.decode_counts(latent, seed=seed)), dtype=np.float32)

    @torch.inference_mode()
    def decode_counts(self, latent: np.ndarray, *, seed: int = 0, log_rate_scale: np.ndarray | None = None) -> np.ndarray:
        """Latent states → ``(n, d)`` float32 counts through the ZIP model (runs with one); ``log_rate_scale``
        ``(d,)`` multiplies each gene's Poisson rate by its exponential (anchored prediction)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        s = torch.as_tensor(latent, dtype=torch.float32, device=self.device)
        scale = None if log_rate_scale is None else torch.exp(torch.as_tensor(log_rate_scale, device=self.device))
        return self.noise.sample_counts(s, generator=gen, rate_scale=scale).cpu().numpy()

    @property
    def guidance(self) -> float:
        """[ours] The run's guidance weight (:func:`lcd_core.sampling.guided`; ``lcd train --set guidance=W``, default
        :attr:`TrainConfig.guidance`). A run from before guidance existed has 1, the weight its anchors, fit check
        and saved evaluations were made at; :func:`~lcd_core.model.set_guidance` (``lcd fit --guidance``) moves it."""
        return float(self.info.get("guidance", 1.0))

    def predict(self, perturbations: list[str], n_cells: int = 500, *, sampler: str | None = None,
                n_evals: int | None = None, seed: int = 0, anchored: bool = False,
                guidance: float | None = None) -> Prediction:
        """Generate cells for each perturbation (``ctrl``, singles, unseen combinations).

        Parameters
        ----------
        perturbations
            Labels in our convention (``A``, ``A+B``, ``ctrl``).
        n_cells
            Cells per perturbation.
        sampler, n_evals
            Sampler name (:data:`lcd_core.sampling.SAMPLERS`) and budget in network evaluations per cell
            (:func:`lcd_core.sampling.sample`); default: the run's.
        seed
            Cells of a label depend only on (seed, label).
        anchored
            [ours] Decode with the run's anchors (:mod:`lcd_core.model._anchor`): each single's mean is the
            measured one; a combination's is LCD's own plus its singles' measured-minus-generated gaps (its rate
            factors fitted on its own generated cells), so the distribution and the interaction stay LCD's.
        guidance
            [ours] Push each perturbation's score away from the control's by this weight
            (:func:`lcd_core.sampling.guided`; README, "Guidance"); default: the run's (:attr:`guidance`).
        """
        if not perturbations:
            raise ConfigError("no perturbation given")
        if anchored and self.anchors is None:
            raise ConfigError("this run has no anchors (anchored prediction needs a count model and the "
                              "measured training cells): `lcd evaluate RUN --data SCREEN` fits them")
        weight = self.guidance if guidance is None else float(guidance)
        if anchored and weight != self.anchors.guidance:
            raise ConfigError(f"this run's anchors were fitted on cells generated at guidance {self.anchors.guidance:g}; "
                              "an anchored prediction at another weight would not reproduce the measured singles")
        cells, latent, unseen, counts = {}, {}, {}, {}
        for label in perturbations:
            label = parse_label(label)
            _, new = self.multihot(label)
            x = self.sample_standardised(label, n_cells, sampler=sampler, n_evals=n_evals, seed=seed,
                                         guidance=weight)
            s = self.mu + self.sd * x
            latent[label] = s.astype(np.float32)
            if self.noise is not None:  # keep the counts: the file's own space needs them (lcd predict)
                decode_seed = _label_seed(seed + 1, label)
                scale = anchored_log_scale(self, label, s, seed=decode_seed) if anchored else None
                counts[label] = self.decode_counts(s, seed=decode_seed, log_rate_scale=scale)
                cells[label] = np.asarray(normalize_log1p(counts[label]), dtype=np.float32)
            else:
                cells[label] = self.decode(s, seed=_label_seed(seed + 1, label))
            if new:
                unseen[label] = new
        params = {"sampler": sampler or self.info.get("sampler", "fast"),
                  "n_evals": n_evals if n_evals is not None else self.info.get("sampler_evals"),
                  "seed": seed, "n_cells": n_cells, "run": self.info.get("run"), "anchored": bool(anchored),
                  "guidance": weight}
        return Prediction(cells=cells, latent=latent, unseen=unseen, params=params, counts=counts,
                          extrapolation=extrapolation_notes(list(cells), unseen, trained_order=self.trained_order))

    @property
    def trained_order(self) -> int:
        """Largest number of genes perturbed together in one training condition."""
        return max((len(targets_of(c)) for c in self.conditions), default=0)

    def extrapolation(self, perturbations: list[str]) -> dict[str, str]:
        """label → sentence for each perturbation outside the training design (a gene never perturbed in
        training, a combination of more genes than any training condition and more than two), saying what
        the model does there; :func:`~lcd_core.model.extrapolation_notes`. Nothing is generated."""
        unseen = {}
        for label in perturbations:
            label = parse_label(label)
            new = self.multihot(label)[1]
            if new:
                unseen[label] = new
        return extrapolation_notes(perturbations, unseen, trained_order=self.trained_order)

    # -- the drift, for CLIPR ----------------------------------------------------------------------
    def condition_multihot(self, labels: list[str]) -> torch.Tensor:
        """``(len(labels), P)`` multi-hot tensor on the model's device."""
        return torch.as_tensor(np.stack([self.multihot(lbl)[0] for lbl in labels]), device=self.device)

    def score_fn_for(self, labels: list[str]):
        """``score_fn(x (n, d) standardised, sigma, cond (n,) long) -> (n, d)`` over ``labels``,
        the interface of :mod:`lcd_core.tl` (condition ``i`` = ``labels[i]``)."""
        table = self.condition_multihot(labels)
        with torch.inference_mode():
            shifts = self.net.condition_shifts(table)  # once: the flows evaluate the same conditions many times

        def score_fn(x: torch.Tensor, sigma: float, cond: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return self.net.score(x.to(self.device, torch.float32), float(sigma), table,
                                      index=cond.to(self.device), shifts=shifts).to(x.dtype)

        return score_fn

    # -- persistence ------------------------------------------------------------------------------
    def save(self, run: RunDir) -> None:
        """Write ``model.safetensors`` + ``model.json`` into the run directory (atomically)."""
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        if self.noise is not None:
            tensors |= {f"noise.{k}": v.detach().cpu().contiguous() for k, v in self.noise.state_dict().items()}
        if self.decoder is not None:
            tensors |= {f"decoder.{k}": v.contiguous() for k, v in self.decoder.state_dict().items()}
        tensors["mu"] = torch.as_tensor(self.mu)
        tensors["sd"] = torch.as_tensor(self.sd)
        tmp = run / f".{WEIGHTS}.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(run / WEIGHTS)
        atomic_write_json(run / MODEL_META, {
            "model_format_version": MODEL_FORMAT_VERSION,
            "genes": self.genes, "pert_genes": self.pert_genes, "conditions": self.conditions,
            "net_init": self.net.init_params, "has_noise": self.noise is not None,
            "has_decoder": self.decoder is not None, "info": self.info,
        })

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> "LCD":
        """Load a finished run; refuses incomplete, corrupt or incompatible runs with a clear message."""
        run = RunDir(path)
        run.require_complete()
        try:
            meta = json.loads((run / MODEL_META).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            raise RunError(f"{run / MODEL_META} is missing or corrupt; retrain the run") from None
        if meta.get("model_format_version") not in READABLE_MODEL_FORMATS:
            raise RunError(f"{run.path} holds model format {meta.get('model_format_version')}; this version "
                           f"reads formats {', '.join(map(str, READABLE_MODEL_FORMATS))}. Retrain the run.")
        dev = resolve_device(device)
        try:
            tensors = load_file(str(run / WEIGHTS), device="cpu")  # safetensors: never unpickles
        except (SafetensorError, OSError, ValueError) as e:
            raise RunError(f"{run / WEIGHTS} is corrupt ({e}); retrain the run") from None
        net = ScoreNet(**meta["net_init"])
        noise = decoder = None
        try:
            net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
            if meta["has_noise"]:
                noise_state = {k[6:]: v for k, v in tensors.items() if k.startswith("noise.")}
                noise = ZIPNoise(noise_state["unit_scale"].numpy())
                noise.load_state_dict(noise_state)
            if meta.get("has_decoder"):  # absent before format 3
                decoder = QuantileDecoder.from_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")})
        except (RuntimeError, KeyError, ValueError) as e:
            raise RunError(f"{run / WEIGHTS} does not fit {run / MODEL_META} ({_short(e)}); retrain the run") from None
        info = dict(meta.get("info", {}), run=str(run.path))
        return cls(genes=meta["genes"], pert_genes=meta["pert_genes"], conditions=meta["conditions"],
                   net=net.to(dev), mu=tensors["mu"].numpy(), sd=tensors["sd"].numpy(),
                   noise=noise.to(dev) if noise is not None else None, info=info, decoder=decoder,
                   anchors=Anchors.load(run.path) if meta["has_noise"] else None)


def multihot(targets: Iterable[str], index: Mapping[str, int]) -> np.ndarray:
    """``(P,)`` float32 multi-hot of a condition's target genes, ``P = len(index)`` (gene → position among
    the perturbable genes): the one encoding of e_T = Σ_{j∈T} e_j (METHOD.md §1) that stage 2 trains on and
    prediction asks with; control (no targets) is all zeros."""
    vec = np.zeros(len(index), dtype=np.float32)
    for g in targets:
        vec[index[g]] = 1.0
    return vec


def _label_seed(seed: int, label: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(label.encode())) % (2**63 - 1)


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]

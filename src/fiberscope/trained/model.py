"""A trained model loaded from its directory, and the guidance-method wrapper the bench runs.

:func:`load_trained` rebuilds one trained invariance model from ``ROOT/NAME`` (``config.json`` +
``model.safetensors``) as a :class:`TrainedModel`, whose :meth:`TrainedModel.sample` draws fiber
samples for a batch of conditions with per-sample noise streams. :class:`TrainedMethod` wraps it
in the :class:`~fiberscope.guidance.base.GuidanceMethod` signature, so ``fs.sample_fiber`` and
``fiberscope bench`` treat "train once per subject" exactly like "guide at sampling time": same
queries, same metrics, same per-sample seeds. It ignores the prior's denoiser; the prior only
fixes the space the samples are returned in (the VAE latent of ``builtin:colormnist-latent``, or
pixels for a pixel prior).

Example:
    >>> import fiberscope as fs
    >>> from fiberscope.trained import TrainedMethod
    >>> out = fs.sample_fiber("builtin:colorblind-mnist", query, "builtin:colormnist-latent", n=8,  # doctest: +SKIP
    ...                       method=TrainedMethod("cfm-l10"), seed=0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import NotTrainedError
from ..guidance.base import FiberObjective, GuidanceMethod, SampleNoise, StepCallback, Trajectory
from ..priors.base import CallablePrior, Prior
from ..priors.latent import LatentPrior
from ..priors.schedule import VPSchedule
from .cfm import ConditionalFlowMatching
from .common import Codec, file_digest, model_dir, read_json
from .featinv import FeatInvUNet
from .flows import ConditionalINN
from .svae import SupervisedVAE, SVAEHead

__all__ = ["TrainedMethod", "TrainedModel", "load_trained", "load_trained_subject"]

_CLASSES: dict[str, type[nn.Module]] = {
    "ConditionalFlowMatching": ConditionalFlowMatching,
    "ConditionalINN": ConditionalINN,
    "FeatInvUNet": FeatInvUNet,
    "SupervisedVAE": SupervisedVAE,
}


def _not_trained(name: str, d: Path) -> NotTrainedError:
    return NotTrainedError(
        f"trained model {name!r} has no weights in {d}: train it with `fiberscope trained train {name}` "
        "(or point root= / $FIBERSCOPE_TRAINED_DIR at the directory that holds it)"
    )


class TrainedModel(nn.Module):
    """One trained invariance model with its frozen autoencoder (if it works in a latent space).

    Attributes:
        name: the model's name.
        config: its ``config.json``.
        net: the trained network (flow, velocity field, conditional UNet or supervised VAE).
        codec: the autoencoder of latent models (None for pixel ones).
        condition: ``"features"`` (conditioned on φ(query)) or ``"query"`` (on the query image).
    """

    def __init__(self, name: str, config: dict[str, Any], net: nn.Module, codec: Codec | None):
        super().__init__()
        self.name = name
        self.config = config
        self.net = net.eval().requires_grad_(False)
        self.codec = codec.eval().requires_grad_(False) if codec is not None else None
        self.condition: str = config["condition"]
        self._probe_ok: dict[int, bool] = {}

    @property
    def output(self) -> str:
        """``"latent"`` or ``"pixels"``."""
        return str(self.config["output"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.config["image_shape"])

    @property
    def cond_shape(self) -> tuple[int, ...]:
        return tuple(self.config["cond_shape"])

    def sample(
        self,
        cond: torch.Tensor,
        noise: SampleNoise,
        *,
        steps: int | None = None,
        temperature: float = 1.0,
        guidance_scale: float | None = None,
    ) -> tuple[torch.Tensor, int]:
        """One sample per row of ``cond``: normalised latents (latent models) or images (pixel ones).

        Args:
            cond: ``[B, *cond_shape]`` features φ(query) (``condition == "features"``) or query
                images ``[B, *image_shape]`` in [-1, 1] (``condition == "query"``).
            noise: one random stream per row.
            steps: ODE steps (flow matching) or denoising steps (FeatInv); default: as trained.
            temperature: scale of the Gaussian codes (flows, flow matching, nuisance dimensions).
            guidance_scale: classifier-free guidance weight of FeatInv (default: as recorded).

        Returns:
            ``(samples, network evaluations per sample)``.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {temperature}")
        samp = dict(self.config.get("sampling", {}))
        net = self.net
        with torch.no_grad():
            if isinstance(net, ConditionalFlowMatching):
                eps = noise.randn((net.dim,)).to(cond.device) * temperature
                st = int(steps if steps is not None else samp.get("steps", net.ode_steps))
                return net.generate(cond, eps, st, samp.get("solver")), net.evaluations(st, samp.get("solver"))
            if isinstance(net, ConditionalINN):
                eps = noise.randn((net.dim,)).to(cond.device) * temperature
                return net.generate(cond, eps), 1
            if isinstance(net, FeatInvUNet):
                st = int(steps if steps is not None else samp.get("steps", 50))
                w = float(guidance_scale if guidance_scale is not None else samp.get("guidance_scale", 1.0))
                x = net.sample(cond, noise, st, w, samp.get("sampler", "ddim"), float(samp.get("eta", 0.0)))
                return x, st * (1 if w == 1.0 else 2)
            if isinstance(net, SupervisedVAE):
                nuisance = noise.randn((net.nuisance_dims,)).to(cond.device) * temperature
                return net.fiber(cond, nuisance), 2  # one encoder and one decoder pass
        raise TypeError(f"unknown trained network {type(net).__name__}")  # pragma: no cover

    def images(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples of :meth:`sample` as images in [-1, 1]."""
        if self.output == "latent":
            assert self.codec is not None
            with torch.no_grad():
                return self.codec.decode(samples)
        return samples

    def to_state(self, samples: torch.Tensor, prior: Prior) -> torch.Tensor:
        """Samples of :meth:`sample` as states of ``prior`` (what its ``decode`` turns into images).

        A latent model paired with a latent prior over the *same* autoencoder returns that prior's
        normalised latents exactly; paired with a pixel prior it returns decoded images.
        """
        if self.output == "latent" and prior.is_latent:
            assert self.codec is not None
            if not (isinstance(prior, LatentPrior) and self._same_decoder(prior)):
                raise ValueError(
                    f"trained model {self.name!r} samples latents of {self.codec.source}, but prior {prior.name!r} "
                    "decodes another latent space; pair it with the prior it was trained on "
                    f"({self.config.get('pair', ['?'])[0]}) or with a pixel prior of the same image size"
                )
            raw = self.codec.raw(samples)
            return (raw - prior.shift.to(raw)) * prior.scale.to(raw)
        images = self.images(samples)
        if prior.is_latent or tuple(prior.state_shape) != tuple(images.shape[1:]):
            raise ValueError(
                f"trained model {self.name!r} makes images of shape {tuple(images.shape[1:])}, which prior "
                f"{prior.name!r} (states {tuple(prior.state_shape)}) cannot hold; pair it with "
                f"{self.config.get('pair', ['a pixel prior of that shape'])[0]}"
            )
        return images

    def _same_decoder(self, prior: LatentPrior) -> bool:
        key = id(prior)
        if key not in self._probe_ok:
            assert self.codec is not None
            g = torch.Generator().manual_seed(0)
            z = torch.randn(2, self.codec.latent_dim, generator=g).to(prior.shift.device)
            if tuple(prior.state_shape) != (self.codec.latent_dim,):
                self._probe_ok[key] = False
            else:
                with torch.no_grad():
                    mine = self.codec.decode(z)
                    theirs = prior.decode((self.codec.raw(z) - prior.shift) * prior.scale)
                self._probe_ok[key] = tuple(mine.shape) == tuple(theirs.shape) and bool(
                    (mine - theirs).abs().max() < 1e-3
                )
        return self._probe_ok[key]

    def output_prior(self) -> Prior:
        """A prior that only decodes this model's samples (its denoiser is never used).

        Lets ``fs.sample_fiber(subject, query, model.output_prior(), method=TrainedMethod(...))``
        run without the prior the model is compared with.
        """
        zero = _Zero()
        if self.output == "latent":
            assert self.codec is not None
            return LatentPrior(
                zero,
                VPSchedule.linear(),
                "eps",
                latent_shape=(self.codec.latent_dim,),
                decoder=_Decode(self.codec.vae),
                encoder=_Encode(self.codec.vae),
                image_shape=self.image_shape,
                data_range=(-1.0, 1.0),
                shift=self.codec.shift,
                scale=self.codec.scale,
                name=f"trained:{self.name} (decoder only)",
            )
        return CallablePrior(
            zero, VPSchedule.linear(), "eps", state_shape=self.image_shape, name=f"trained:{self.name} (pixels)"
        )


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class _Decode(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)  # type: ignore[operator]


class _Encode(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)  # type: ignore[operator]


_CACHE: dict[tuple[str, str], TrainedModel] = {}


def load_codec(config: dict[str, Any], directory: Path) -> Codec | None:
    """The autoencoder a latent model was trained with (checked against the recorded digest)."""
    c = config.get("codec")
    if not c:
        return None
    if c.get("file"):
        return Codec.from_file(directory / c["file"], c["vae_kwargs"])
    src = str(c["source"])
    if not src.startswith("builtin:"):
        raise ValueError(f"{directory}/config.json: codec source {src!r} is neither a file nor a builtin model")
    codec = Codec.from_zoo(src.removeprefix("builtin:"))
    if c.get("digest") and codec.digest != c["digest"]:
        raise ValueError(
            f"trained model in {directory} was trained on {src} weights {c['digest']}, but the installed ones are "
            f"{codec.digest}: retrain it (`fiberscope trained train NAME` after deleting {directory})"
        )
    return codec


def load_trained(name: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> TrainedModel:
    """Load a trained model by name (``ROOT/NAME``) or directory.

    Args:
        name: a recipe name (``"cfm-l10"``) or a directory holding ``config.json`` and ``model.safetensors``.
        root: where named trained models live (default ``$FIBERSCOPE_TRAINED_DIR`` or ``~/.cache/fiberscope/trained``).

    Raises:
        NotTrainedError: no weights there yet (the message names the training command).

    Example:
        >>> from fiberscope.trained import load_trained
        >>> model = load_trained("svae-mnist")                                     # doctest: +SKIP
        >>> model.sample(queries, fs.SampleNoise([0, 1, 2]))[0].shape               # doctest: +SKIP
    """
    d = model_dir(os.fspath(name), root)
    cfg = read_json(d / "config.json")
    wpath = d / "model.safetensors"
    if cfg is None or not wpath.exists():
        raise _not_trained(Path(os.fspath(name)).name, d)
    key = (str(d.resolve()), file_digest(wpath))
    if key in _CACHE:
        return _CACHE[key]
    cls = _CLASSES.get(cfg["model"]["class"])
    if cls is None:
        raise ValueError(f"{d}/config.json: unknown model class {cfg['model']['class']!r}; known: {sorted(_CLASSES)}")
    net = cls(**cfg["model"]["kwargs"])
    net.load_state_dict(load_file(str(wpath)))
    model = TrainedModel(cfg.get("name", d.name), cfg, net, load_codec(cfg, d))
    _CACHE[key] = model
    return model


def load_trained_subject(name: str, layer: Any = None, root: str | os.PathLike[str] | None = None) -> Any:
    """A trained model's own classifier as a subject (``trained:svae-mnist``; layer ``logits`` or ``task``).

    What the ``trained:`` prefix of :func:`fiberscope.load_subject` loads (:data:`fiberscope.loading.SUBJECT_PREFIXES`).
    """
    from ..subjects.base import Subject

    model = load_trained(name, root)
    if not isinstance(model.net, SupervisedVAE):
        raise ValueError(
            f"trained:{name} is a {type(model.net).__name__}, which has no classifier of its own; only the "
            "supervised VAE (e.g. trained:svae-mnist) can be used as a subject"
        )
    output = "logits" if layer in (None, "logits") else str(layer)
    return Subject(SVAEHead(model.net, output), input_range=(-1.0, 1.0), name=f"trained:{name}", layer=output)


@dataclass
class TrainedMethod(GuidanceMethod):
    """A trained invariance model as a guidance method: one network pass (or a few) per sample.

    The condition is φ(query) as the objective computes it (the pair's subject must be the one the
    model was trained on) or, for the supervised VAE, the query image itself.

    Args:
        model: a recipe name (``"cfm-l10"``, ``"featinv-mnist"``, ...) or a trained model's directory.
        root: where named trained models live (default ``$FIBERSCOPE_TRAINED_DIR`` or the user cache).
        steps: ODE / denoising steps at sampling time (default: as recorded at training).
        temperature: scale of the Gaussian codes (1: the model's own distribution).
        guidance_scale: FeatInv's classifier-free guidance weight (default: as recorded).
        check_subject: refuse a pair whose subject is not the one the model was trained on.

    Example:
        >>> from fiberscope.trained import TrainedMethod
        >>> TrainedMethod("cfm-l10").config()["model"]                            # doctest: +SKIP
        'cfm-l10'
    """

    model: str = ""
    root: str | None = None
    steps: int | None = None
    temperature: float = 1.0
    guidance_scale: float | None = None
    check_subject: bool = True

    name = "trained"
    needs_gradients = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must name a trained model (e.g. 'cfm-l10'), got {self.model!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number ≥ 0, got {self.temperature!r}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be ≥ 0, got {self.guidance_scale!r}")
        d = self.directory
        if not (d / "config.json").exists() or not (d / "model.safetensors").exists():
            raise _not_trained(Path(self.model).name, d)

    @property
    def directory(self) -> Path:
        return model_dir(self.model, self.root)

    def load(self) -> TrainedModel:
        return load_trained(self.model, self.root)

    def config(self) -> dict[str, Any]:
        """Settings plus what identifies the trained weights (their digest) and what training cost."""
        out = super().config()
        d = self.directory
        cfg = read_json(d / "config.json") or {}
        rec = read_json(d / "training.json") or {}
        out.update(
            kind=cfg.get("kind"),
            architecture=cfg.get("model", {}).get("class"),
            weights=file_digest(d / "model.safetensors"),
            pair=cfg.get("pair"),
            subject=(cfg.get("subject") or {}).get("name"),
            lambda_fiber=cfg.get("lambda_fiber"),
            train_seconds=rec.get("total_wall_seconds"),
            train_steps=rec.get("steps"),
            train_hardware=rec.get("hardware"),
        )
        return out

    def times(self, prior: Prior) -> list[float]:
        return [0.0]  # one pass: the progress bar counts one step per batch

    def initial_state(self, prior: Prior, objective: FiberObjective, noise: SampleNoise) -> torch.Tensor:
        """A placeholder (the model draws its own noise from ``noise`` in :meth:`run`)."""
        return torch.zeros(len(noise), *prior.state_shape, device=noise.device)

    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        noise: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        model = self.load().to(x_init.device)
        b = len(noise)
        if model.condition == "features":
            self._check_subject(model, objective)
            cond = objective.target.float()
            if tuple(cond.shape[1:]) != model.cond_shape:
                raise ValueError(
                    f"trained model {model.name!r} is conditioned on features of shape {model.cond_shape}, but the "
                    f"subject gives {tuple(cond.shape[1:])}: use the subject and layer it was trained on"
                )
        else:
            cond = objective.query.float()
            if tuple(cond.shape[1:]) != model.image_shape:
                raise ValueError(
                    f"trained model {model.name!r} takes query images of shape {model.image_shape}, got "
                    f"{tuple(cond.shape[1:])}"
                )
        if cond.shape[0] == 1 and b > 1:
            cond = cond.expand(b, *cond.shape[1:])
        samples, evals = model.sample(
            cond.to(x_init.device),
            noise,
            steps=self.steps,
            temperature=float(self.temperature),
            guidance_scale=self.guidance_scale,
        )
        state = model.to_state(samples, prior).float()
        if prior.counter is not None:  # the trained network's passes, counted as the generator's forwards
            prior.counter.prior_forwards += b * evals
        if callback is not None:
            callback({"step": 0, "t": 0.0, "x": state, "x0": state, "gamma": 0.0, "cost": None, "steps": 1})
        return Trajectory(sample=state, x=state, x0=state, info={"evaluations_per_sample": evals})

    def _check_subject(self, model: TrainedModel, objective: FiberObjective) -> None:
        if not self.check_subject:
            return
        want = model.config.get("subject") or {}
        have = (getattr(objective.subject, "name", None), getattr(objective.subject, "layer", None))
        expected = (want.get("name"), want.get("layer"))
        if expected[0] is not None and have != expected:
            fmt = lambda nl: nl[0] + (f"@{nl[1]}" if nl[1] else "")  # noqa: E731
            raise ValueError(
                f"trained model {model.name!r} was trained on φ = {fmt(expected)}, but the subject here is "
                f"{fmt((str(have[0]), have[1]))}: run it on its own pair ({model.config.get('pair')}) or pass "
                "check_subject=False"
            )

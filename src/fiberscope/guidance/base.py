"""What every guidance method shares: the fiber objective, per-sample noise, the update rule, the
settings several methods have (declared and checked once), one Adam step and one clip range.

One signature for all methods (NDTM, the training-free baselines, plain sampling)::

    method.run(prior, objective, x_init, noise, callback) -> Trajectory

``noise`` is a :class:`SampleNoise`: one ``torch.Generator`` per sample, so sample ``i`` draws the
same noise whether it runs alone or in a batch of 8 (the keyword was ``generator`` before; it still
works, with a DeprecationWarning, for one release). Network calls are counted by the prior and
subject themselves (see :class:`~fiberscope.priors.CallCounter`).

The step callback
-----------------
``callback(info)`` is called once per step (per Adam iteration for pixel optimisation) with a dict.
Every method gives:

=========== ====================================================================================
key         value
=========== ====================================================================================
``step``    the step's index, 0 = the noisiest (the iteration for pixel optimisation)
``t``       the step's time in the prior's native units (the iteration, as a float, for pixel
            optimisation, which has no diffusion time)
``x``       the state after the step ``[B, ...]``
``x0``      the clean estimate the step used ``[B, ...]`` (the state itself for pixel optimisation)
``cost``    the per-sample cost ``[B]`` the method optimised at this step, or None where it computed
            none (unguided steps)
``steps``   the number of steps of the run
=========== ====================================================================================

and, by method:

============================== ================================================================
method                         extra keys
============================== ================================================================
NDTM                           ``gamma`` (γ(t)), ``lr`` (the control's learning rate),
                               ``w_control`` (κ), ``w_score`` (τ)
AutoNDTM                       ``polyak_steps`` (the step's control steps, 0: unguided),
                               ``rho`` (their ρ)
DPS, FreeDoM, UGD, MPGD, TFG   ``rho`` (ρ_t, the x_t-gradient strength), ``mu`` (μ_t, the
                               x0-gradient strength) of the step's plan
PixelOptimization              ``lr`` (the iteration's learning rate)
Unguided                       none (no control, no step size; it sent a filler ``gamma``: 0.0 until issue 22)
============================== ================================================================

The batch driver (:func:`fiberscope.sampling.draw_rows`, behind :func:`fiberscope.sample_fiber` and
the bench) adds ``batch`` (the batch's index) and cuts the per-sample tensors to the batch's real
samples.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..errors import GuidanceError
from ..losses import LOSSES, LossFn, get_loss
from ..priors.base import Denoised, Prior
from ..priors.steps import ancestral_step, ddim_coefficients, ddim_step
from ..subjects.base import Subject
from ..validation import check_method_settings

__all__ = [
    "AdamSettings",
    "ClipSpec",
    "FiberObjective",
    "GuidanceError",
    "GuidanceMethod",
    "LossSetting",
    "SampleNoise",
    "SamplingSettings",
    "StepRule",
    "Trajectory",
    "adam_step",
    "check_clip",
    "clip_range",
    "per_sample_clip",
]

SAMPLERS = ("ddim", "ancestral", "euler")


class SampleNoise:
    """Per-sample random streams: ``randn(shape)`` draws sample ``i`` from generator ``i``.

    Noise is drawn on the CPU and moved to ``device``, so results do not depend on the device's RNG.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """``[B, *shape]`` standard normal noise, row ``i`` from generator ``i``."""
        return torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators]).to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, *x.shape[1:]]`` noise, one row per generator (B = ``len(self)``, whatever ``x``'s batch)."""
        return self.randn(x.shape[1:])


def per_sample_clip(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each sample's gradient to norm at most ``max_norm`` (the reference's ``1/(‖g‖ + 1e-6)``)."""
    n = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return g * torch.clamp(max_norm / (n + 1e-6), max=1.0)


def adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    k: int,
    lr: float,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One Adam step on ``param``, in place; ``m`` and ``v`` (the moments) are updated in place too.

    Element-wise, so each sample of a batch is optimised on its own. ``k`` counts the steps from 1
    (the bias corrections). The update is ``torch.optim.Adam``'s (without weight decay), up to rounding.

    Example:
        >>> import torch
        >>> p, m, v = torch.tensor([1.0, -2.0]), torch.zeros(2), torch.zeros(2)
        >>> adam_step(p, torch.tensor([0.5, -4.0]), m, v, k=1, lr=0.1)   # the first step is lr·sign(grad)
        >>> p
        tensor([ 0.9000, -1.9000])
    """
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v / (1 - b2**k)).sqrt_().add_(eps)
    param.addcdiv_(m, denom, value=-lr / (1 - b1**k))


#: A clip setting: ``"auto"`` (the prior's own :attr:`~fiberscope.priors.Prior.clip_range`), ``(lo, hi)``
#: or None (no clipping).
ClipSpec = tuple[float, float] | str | None


def check_clip(clip: Any) -> None:
    """Raise a one-line ValueError unless ``clip`` is ``"auto"``, None or ``(lo, hi)`` with lo < hi."""
    if clip is None or (isinstance(clip, str) and clip == "auto"):
        return
    try:
        c = tuple(float(v) for v in clip)
    except (TypeError, ValueError):
        c = ()
    if len(c) != 2 or not c[0] < c[1]:
        raise ValueError(f"clip must be 'auto', None or (lo, hi) with lo < hi, got {clip!r}")


def clip_range(clip: ClipSpec, prior: Prior) -> tuple[float, float] | None:
    """The range a clip setting stands for on ``prior`` (``"auto"``: the prior's own; None: no clipping).

    Example:
        >>> from fiberscope.priors import GaussianPrior
        >>> prior = GaussianPrior(dim=2)          # unbounded data: no clip range of its own
        >>> clip_range("auto", prior), clip_range((-5, 5), prior), clip_range(None, prior)
        (None, (-5.0, 5.0), None)
    """
    if isinstance(clip, str):
        return prior.clip_range
    return None if clip is None else (float(clip[0]), float(clip[1]))


class FiberObjective:
    """The fiber loss of states against the query's features: what every method minimises.

    Args:
        prior: decodes states to data (latent priors) and denoises the query for per-step targets.
        subject: φ.
        query: the query image ``[1, *image_shape]`` in the prior's data range.
        loss: the terminal cost (name or callable); the reference uses ``l2``.
    """

    def __init__(self, prior: Prior, subject: Subject, query: torch.Tensor, loss: str | LossFn = "l2"):
        self.prior = prior
        self.subject = subject
        self.query = query
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        with torch.no_grad():
            self.target = self.features_of_data(query).detach()
        self._query_state: torch.Tensor | None = None
        self._rows: list[FiberObjective] | None = None

    @classmethod
    def rows(cls, objectives: Sequence[FiberObjective]) -> FiberObjective:
        """One objective for a batch whose row ``i`` is ``objectives[i]``'s query, target and query state.

        The rows may belong to different queries (the bench batches several); each keeps the target its
        own objective computed (φ of its query alone), so no row depends on the others. Nothing is
        computed here: the targets are reused, the query states are encoded per query when a method
        first asks for them. All objectives share the prior, the subject and the loss.

        Example:
            >>> import torch, fiberscope as fs
            >>> prior, subject = fs.GaussianPrior(dim=2), fs.load_subject(lambda x: x)
            >>> a, b = (fs.FiberObjective(prior, subject, torch.tensor([[v, 0.0]])) for v in (1.0, 2.0))
            >>> fs.FiberObjective.rows([a, a, b]).target[:, 0].tolist()
            [1.0, 1.0, 2.0]
        """
        if not objectives:
            raise ValueError("FiberObjective.rows needs at least one objective")
        first = objectives[0]
        for o in objectives:
            if o.prior is not first.prior or o.subject is not first.subject or o.loss_fn is not first.loss_fn:
                raise ValueError("the rows of one batch must share the prior, the subject and the loss")
        out = cls.__new__(cls)
        out.prior, out.subject = first.prior, first.subject
        out.loss_name, out.loss_fn = first.loss_name, first.loss_fn
        out.query = torch.cat([o.query for o in objectives])
        out.target = torch.cat([o.target for o in objectives])
        out._query_state = None
        out._rows = list(objectives)
        return out

    @property
    def data_range(self) -> tuple[float, float] | None:
        return self.prior.data_range

    def features_of_data(self, x: torch.Tensor) -> torch.Tensor:
        """φ of data-space images (no decoding)."""
        return self.subject(x, self.data_range)

    def features(self, state: torch.Tensor) -> torch.Tensor:
        """φ(decode(state))."""
        return self.features_of_data(self.prior.decode(state))

    def loss(self, state: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample terminal cost ``ℓ(φ(decode(state)), target)``, shape [B]."""
        return self.loss_fn(self.features(state), self.target if target is None else target)

    @property
    def query_state(self) -> torch.Tensor:
        if self._query_state is None:
            if self._rows is not None:  # a batch of rows: each query encoded once, alone
                self._query_state = torch.cat([o.query_state for o in self._rows])
            else:
                with torch.no_grad():
                    self._query_state = self.prior.encode(self.query).detach()
        return self._query_state

    @torch.no_grad()
    def target_at(
        self,
        t: float,
        noise: SampleNoise,
        clip: tuple[float, float] | None,
        tweedie: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The paper's per-timestep target: φ of the prior's estimate of the query noised to ``t``.

        Each sample draws its own noise, so targets are per sample ``[B, ...]``.
        """
        z = self.query_state
        a, s = self.prior.schedule.alpha_sigma(t)
        xi = noise.randn(z.shape[1:])
        zt = a.float() * z + s.float() * xi
        x0 = tweedie(zt, t) if tweedie is not None else self.prior.denoise(zt, t).x0
        if clip is not None:
            x0 = x0.clamp(*clip)
        return self.features(x0)


@dataclass
class Trajectory:
    """Result of one guidance run (a batch of samples).

    Attributes:
        sample: the output, in state space (``x0`` of the last step or the final state).
        x: the final state.
        x0: the last clean-data estimate.
        loss_history: per guided step, the batch mean of the cost the method optimised at that step
            (NDTM: its whole cost C(u) at the last inner iteration; the training-free baselines: the
            fiber loss of the step's clean estimate before the update), when the method records it.
        info: method-specific extras.
    """

    sample: torch.Tensor
    x: torch.Tensor
    x0: torch.Tensor
    loss_history: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


StepCallback = Callable[[dict[str, Any]], Any]


@dataclass
class StepRule:
    """How to go from time t to s once x̂0 and ε̂ are known: DDIM (any η), DDPM ancestral, or Euler.

    Two flags reproduce the reference implementation's branches exactly where fiberscope's own
    rule differs (both default off, every ``paper-*`` preset sets the one its branch needs):

    * ``ancestral_rescaled`` (ancestral sampler): a rescaled linear schedule with K entries,
      β' = linspace(c·β_first, c·β_last, K) with c = T/K and the prior's own β range and T, is used
      for the Tweedie estimate and the update, while the network still sees the original t. This
      mis-scales x̂0 early on, but it is what the paper's numbers were produced with. It needs a VP
      prior trained on a linear β schedule and K > T·β_last (so that β' < 1).
    * ``reference_ddim`` (DDIM sampler): the ε coefficient under ``learned_range`` is the
      small-variance one, c2 = √(1 − ᾱ_s − c1_small²), instead of √(1 − ᾱ_s − c1²); and the noise
      c1·ξ is drawn on every step, the last one included, where variance ``large`` adds
      η·√β_0·ξ (0.005·ξ at η = 0.5) to the final state.

    Example:
        >>> from fiberscope.priors import GaussianPrior
        >>> prior = GaussianPrior(dim=2)
        >>> rule = StepRule("ancestral", ancestral_rescaled=True)
        >>> float(rule.rescaled_betas(prior, 40)[-1])   # 0.02 · 1000/40
        0.5
        >>> len(rule.prepare(prior, prior.schedule.grid(40)))   # K grid times + the clean end
        41
    """

    sampler: str = "ddim"
    eta: float = 0.0
    variance: str = "small"
    ancestral_rescaled: bool = False
    reference_ddim: bool = False

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.variance not in ("small", "large", "learned_range"):
            raise ValueError(f"variance must be 'small', 'large' or 'learned_range', got {self.variance!r}")

    @property
    def rescaled(self) -> bool:
        """Whether the reference's rescaled ancestral table is in use."""
        return self.ancestral_rescaled and self.sampler == "ancestral"

    def rescaled_betas(self, prior: Prior, steps: int) -> torch.Tensor:
        """The reference's rescaled β' (K entries, clean end first) for ``prior`` and K = ``steps``.

        Raises a one-line ValueError for a non-VP prior, a non-linear β schedule, or K ≤ T·β_last.
        """
        sched = prior.schedule
        if sched.kind != "vp":
            raise ValueError(
                "ancestral_rescaled reproduces a quirk of the VP reference code; it needs a VP prior "
                "(use ancestral_rescaled=False)"
            )
        lin = getattr(sched, "linear_betas", None)
        if lin is None:
            raise ValueError(
                "ancestral_rescaled rescales a linear β schedule to the number of sampling steps, and this prior "
                "was trained on a non-linear schedule (e.g. cosine or scaled-linear); use ancestral_rescaled=False"
            )
        T = sched.num_train_timesteps
        c = T / steps
        if c * lin[1] >= 1:
            raise ValueError(
                f"ancestral_rescaled builds the reference's rescaled schedule β' up to β_last·T/steps = "
                f"{lin[1]:g}·{T}/{steps} = {c * lin[1]:.3g}, which must stay below 1; use steps > "
                f"{math.floor(lin[1] * T)} (got {steps}) or ancestral_rescaled=False"
            )
        return torch.linspace(c * lin[0], c * lin[1], steps, dtype=torch.float64)

    def prepare(self, prior: Prior, times: list[float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(α, σ) at every grid time, plus the clean end; the reference's rescaled table if asked."""
        if self.variance == "learned_range" and not prior.learned_variance:
            raise ValueError(
                "variance='learned_range' needs a prior that predicts its variance (learn_sigma); "
                "use 'small' or 'large' with this prior"
            )
        if self.rescaled:
            k = len(times)
            ab = torch.cumprod(1 - self.rescaled_betas(prior, k), 0)  # ab[j], j = 0 (clean end) .. K-1 (noisiest)
            table = [(ab[k - 1 - i].sqrt(), (1 - ab[k - 1 - i]).sqrt()) for i in range(k)]
        else:
            table = [prior.schedule.alpha_sigma(t) for t in times]
        table.append(prior.schedule.alpha_sigma(None))
        return [(a.float(), s.float()) for a, s in table]

    def tweedie(self, prior: Prior, d: Denoised, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x̂0 from the prior, or from ε̂ with the rescaled ᾱ' of the reference's ancestral branch."""
        if self.rescaled:
            return (x - s.to(x) * d.eps) / a.to(x)
        return d.x0

    def step(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        d: Denoised,
        ts: tuple[torch.Tensor, torch.Tensor],
        ss: tuple[torch.Tensor, torch.Tensor],
        noise: SampleNoise | None,
    ) -> torch.Tensor:
        (a_t, s_t), (a_s, s_s) = [tuple(v.to(x) for v in p) for p in (ts, ss)]
        if self.sampler == "ancestral":
            xi = noise.randn_like(x) if noise is not None and float(s_s) > 0 else None
            return ancestral_step(x, x0, a_t, s_t, a_s, s_s, xi, self.variance, d.v)
        eta = 0.0 if self.sampler == "euler" else self.eta
        ref = self.reference_ddim and self.sampler == "ddim"
        # fiberscope draws ξ only where it is used; the reference draws it at every DDIM step
        draw = ref or (eta > 0 and float(s_s) > 0)
        xi = noise.randn_like(x) if (noise is not None and draw) else None
        return ddim_step(x0, d.eps, a_t, s_t, a_s, s_s, eta, xi, self.variance, d.v, c2_from_small=ref)

    def ddim_c2(
        self,
        ts: tuple[torch.Tensor, torch.Tensor],
        ss: tuple[torch.Tensor, torch.Tensor],
        v: torch.Tensor | None = None,
    ) -> torch.Tensor:
        eta = 0.0 if self.sampler == "euler" else self.eta
        variance = "small" if self.variance == "learned_range" and v is None else self.variance
        ref = self.reference_ddim and self.sampler == "ddim"
        return ddim_coefficients(ts[0], ts[1], ss[0], ss[1], eta, variance, v, ref)[1]


class GuidanceMethod(ABC):
    """Base class: a dataclass of settings with :meth:`run`, :meth:`times` and :meth:`initial_state`.

    ``steps``, ``init`` and ``strength`` are the settings the default :meth:`times` and
    :meth:`initial_state` read; methods that walk the prior's grid get them from
    :class:`SamplingSettings`, the others override both methods (``steps=None``: a method that
    has no grid of its own, such as a trained model's default).
    """

    name: ClassVar[str] = "method"
    needs_gradients: ClassVar[bool] = True
    #: whether the method backpropagates through the prior (MPGD, pixel optimisation, Unguided: no)
    needs_prior_backward: ClassVar[bool] = True

    steps: int | None = None
    init: str = "noise"
    strength: float = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and "noise" in inspect.signature(run).parameters:
            setattr(cls, "run", _accept_generator_keyword(run))  # noqa: B010 (mypy refuses a method assignment)

    @abstractmethod
    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        noise: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        """Sample a batch from ``x_init`` (states at the first grid time), drawing from ``noise``.

        ``callback(info)`` is called after every step (the keys: see this module's docstring).
        """

    def times(self, prior: Prior) -> list[float]:
        """The time grid this method walks, noisiest first (SDEdit: from ``strength``·T down)."""
        if self.steps is None:
            raise NotImplementedError(f"{type(self).__name__} has no time grid of its own: it must override times()")
        sched = prior.schedule
        last = sched.num_train_timesteps - (1 if sched.kind == "vp" else 0)
        t_max = None if self.init != "sdedit" else self.strength * last
        return sched.grid(int(self.steps), t_max)

    def initial_state(self, prior: Prior, objective: FiberObjective, noise: SampleNoise) -> torch.Tensor:
        """Pure noise at the first grid time, or (``init="sdedit"``) the query noised to it."""
        if self.init != "sdedit":
            return noise.randn(prior.state_shape)
        shape = objective.query_state.shape[1:]
        xi = noise.randn(shape)
        t0 = self.times(prior)[0]
        a, s = prior.schedule.alpha_sigma(t0)
        return a.float() * objective.query_state.expand(len(noise), *shape) + s.float() * xi

    def config(self) -> dict[str, Any]:
        """Settings as a JSON-able dict (recorded in every result)."""
        out: dict[str, Any] = {"method": self.name}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v if not callable(v) else getattr(v, "__name__", repr(v))
        return out


def _accept_generator_keyword(run: Callable[..., Trajectory]) -> Callable[..., Trajectory]:
    """``run(..., generator=noise)``, the argument's old name, still works for one release (with a warning)."""

    @functools.wraps(run)
    def wrapper(self: GuidanceMethod, *args: Any, **kwargs: Any) -> Trajectory:
        if "generator" in kwargs:
            warnings.warn(
                f"{type(self).__name__}.run(..., generator=...) is deprecated: the argument is a SampleNoise and is "
                "now named noise; pass noise=... or give it by position",
                DeprecationWarning,
                stacklevel=2,
            )
            if "noise" in kwargs or len(args) > 3:
                raise TypeError(f"{type(self).__name__}.run() got both noise and generator; give only noise")
            kwargs["noise"] = kwargs.pop("generator")
        return run(self, *args, **kwargs)

    return wrapper


# ---- settings shared by several methods (dataclass mixins: declared, documented and checked once) ----
OUTPUTS = ("x0", "state")
INITS = ("noise", "sdedit")


@dataclass
class SamplingSettings(GuidanceMethod):
    """The base of every method that walks the prior's time grid, with the settings they share:
    NDTM, the training-free baselines (DPS, FreeDoM, UGD, MPGD, TFG) and :class:`~fiberscope.Unguided`.

    A method re-declares a field only to change its default (DPS: ``eta: float = 1.0``).

    Args:
        steps: K denoising steps on the prior's uniform grid.
        sampler: ``"ddim"``, ``"ancestral"`` or ``"euler"`` (the flow ODE; η ignored), see :class:`StepRule`.
        eta: DDIM stochasticity (no effect on the ancestral sampler).
        variance: ``"small"``, ``"large"`` or ``"learned_range"``.
        clip: clip of x̂0 in state space (:data:`ClipSpec`): ``"auto"`` takes the prior's, None disables.
        output: ``"x0"`` (the last clean estimate) or ``"state"`` (the final state).
        init: ``"noise"``, or ``"sdedit"``: start from the query noised to ``strength``.
        strength: SDEdit strength in (0, 1]: the fraction of the trajectory that is re-run.

    Example:
        >>> from fiberscope import DPS, Unguided
        >>> Unguided().eta, DPS().eta, DPS().clip
        (0.0, 1.0, 'auto')
        >>> DPS(output="final")
        Traceback (most recent call last):
        ...
        ValueError: output must be 'x0' or 'state', got 'final'
    """

    steps: int = 100
    sampler: str = "ddim"
    eta: float = 0.0
    variance: str = "small"
    clip: ClipSpec = "auto"
    output: str = "x0"
    init: str = "noise"
    strength: float = 1.0

    @property
    def rule(self) -> StepRule:
        """The update rule these settings select."""
        return StepRule(self.sampler, self.eta, self.variance)

    def clip_range(self, prior: Prior) -> tuple[float, float] | None:
        """The clip of x̂0 on ``prior`` (see :func:`clip_range`)."""
        return clip_range(self.clip, prior)

    def check_sampling(self) -> None:
        """Check every setting's type and bounds (:mod:`fiberscope.validation`), the rule, clip, output and init."""
        check_method_settings(self)
        self.rule.validate()
        check_clip(self.clip)
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be 'x0' or 'state', got {self.output!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be 'noise' or 'sdedit', got {self.init!r}")


@dataclass
class LossSetting:
    """The fiber loss a method minimises: NDTM, the training-free baselines, pixel optimisation.

    Args:
        loss: a name in :data:`fiberscope.losses.LOSSES` (default ``"l2"``, the unsquared norm over
            every feature dimension) or a callable ``(features, target) -> Tensor[B]``.
    """

    loss: str | LossFn = "l2"

    def check_loss(self) -> None:
        """Raise a one-line ValueError for a loss name that is not in :data:`~fiberscope.losses.LOSSES`."""
        if isinstance(self.loss, str) and self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {self.loss!r}")


@dataclass
class AdamSettings:
    """The Adam optimiser of a method's inner variable: NDTM's control, pixel optimisation's input.

    Args:
        lr: the base learning rate (each method's ``lr_schedule`` shapes it over the run).
        adam_betas, adam_eps: Adam's β₁, β₂ and ε (torch's defaults); see :func:`adam_step`.
    """

    lr: float = 2e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def check_adam(self) -> None:
        """Raise a one-line ValueError unless ``adam_betas`` holds two numbers in [0, 1) (lr, ε: validation)."""
        try:
            b1, b2 = (float(b) for b in self.adam_betas)
        except (TypeError, ValueError):
            b1 = b2 = -1.0
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")


def check_finite(value: torch.Tensor, what: str, step: int, t: float) -> None:
    """Raise :class:`GuidanceError` naming the step, time and samples if ``value`` is not finite."""
    bad = ~torch.isfinite(value.detach().flatten(1) if value.dim() > 1 else value.detach())
    if bad.any():
        idx = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten().tolist() if bad.dim() else [0]
        raise GuidanceError(
            f"{what} became NaN/inf at step {step} (t={t:g}) for samples {idx}: lower the learning rate or "
            "gamma, check the subject for operations that can produce NaN (log of 0, division), or run in float32"
        )


def cosine_ramp(start: float, end: float, t_start: float, t_end: float, t: float) -> float:
    """γ = end + ½(start − end)(1 + cos(π (t_start − t)/(t_start − t_end))): start at t_start, end at t_end."""
    if t_start == t_end:
        return float(start)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * (t_start - t) / (t_start - t_end)))

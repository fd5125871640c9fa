"""Real-size benchmark (issue 19 #3): NDTM at the paper's settings on random-weight models of real architectures.

Priors (random weights, built offline from their configs, no hub):

* ``adm-256-uncond``: OpenAI's ADM 256×256 unconditional UNet (552 M parameters; the paper's ImageNet
  prior), fiberscope's own implementation (:mod:`fiberscope.priors.adm`).
* ``ddpm-celebahq-256``: diffusers' ``google/ddpm-ema-celebahq-256`` UNet2DModel (114 M).
* ``sd15``: Stable Diffusion 1.5's UNet2DConditionModel (860 M) with a fixed random prompt embedding
  and its VAE (84 M), as a latent prior at 512×512 (64×64×4 latents).
* ``sd3-medium``: the rectified-flow SD3Transformer2DModel at the SD3-medium config (2 B) with the
  16-channel SD3 VAE, at 1024×1024. Not in ``--quick``; on a 24 GB CPU machine it does not fit
  (8 GB of fp32 weights plus the VAE's backward at 1024²), so run it on a GPU.

Subjects (random weights): torchvision ResNet-50 (``avgpool``), transformers DINOv2 ViT-B/14 (the CLS
token, through fiberscope's HF adapter), open_clip ViT-B/16 (the image embedding).

Per configuration (prior, subject, dtype, gradient checkpointing, batch size) a fresh subprocess
builds the models and runs ``fs.sample_fiber`` with ``NDTM.preset("paper-imagenet-dinov2")`` (200
ancestral steps, N = 5 Adam steps, per-timestep targets), with a constant γ so that every measured
step is a guided one, and stops after ``--warmup`` + ``--steps`` denoising steps. How the figures are
measured:

* ``s_per_step``: wall time between step callbacks, mean over the measured steps.
* ``split``: forward pre/post hooks and full backward pre/post hooks on the prior's network, the
  latent decoder and the subject module time their forwards and backwards (on a GPU each hook
  synchronises first); ``rest`` is the step time minus the timed calls (Adam, the update rule, the
  loss, Python). With gradient checkpointing the recomputed forwards fall inside the backward.
* ``s_per_fiber_paper``: seconds per fiber sample at the paper's setting, projected as
  ``(200·A + G·5·B) / batch``: A is the time of a step's no-grad calls (the per-timestep target and
  the update, the whole cost of a step with γ = 0), B = (step − A)/N one inner Adam iteration at the
  measured N, G the preset's number of steps with γ > 0 (160 of 200). Exact in its parts at N = 5;
  at a smaller ``--inner-steps`` B is extrapolated.
* ``peak_memory_gb``: peak RSS of the subprocess on the CPU (weights included); on a GPU
  ``torch.cuda.max_memory_allocated``.
* ``mfu`` (GPU, or with ``--peak-tflops``): FLOPs of one more step counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over the measured step time, against the device's bf16
  dense peak (a table of known devices, else ``--peak-tflops``).

Usage::

    flock /tmp/cpu-heavy.lock python benchmarks/scale.py --quick --out results/scale   # CPU, about 6 min
    python benchmarks/scale.py --device cuda --out results/scale-gpu                    # every pair, GPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROW_KEYS = (
    "prior",
    "subject",
    "device",
    "dtype",
    "gradient_checkpointing",
    "batch_size",
    "peak_memory_gb",
    "s_per_step",
    "split",
    "s_per_fiber_paper",
)
SPLIT_KEYS = ("prior_forward", "prior_backward", "decoder", "subject", "rest")
PAPER_STEPS, PAPER_INNER = 200, 5

#: dense bf16 peak TFLOP/s by device name (vendor data sheets, without sparsity)
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}

# ---- model configs (written out: nothing is fetched) -------------------------------------------------

ADM_256_UNCOND = dict(  # guided-diffusion's 256x256_diffusion_uncond flags
    image_size=256,
    model_channels=256,
    out_channels=6,  # learn_sigma
    num_res_blocks=2,
    channel_mult=(1, 1, 2, 2, 4, 4),
    attention_ds=(8, 16, 32),  # attention_resolutions 32,16,8 at 256
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
)
DDPM_CELEBAHQ_256 = dict(  # google/ddpm-ema-celebahq-256 unet/config.json
    sample_size=256,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    attention_head_dim=None,
    norm_num_groups=32,
    act_fn="silu",
    center_input_sample=False,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    mid_block_scale_factor=1,
    norm_eps=1e-6,
    time_embedding_type="positional",
)
DDPM_SCHEDULER = dict(
    _class_name="DDPMScheduler",
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    variance_type="fixed_small",
    clip_sample=True,
)
SD15_UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    act_fn="silu",
    center_input_sample=False,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
)
SD15_VAE = dict(  # runwayml/stable-diffusion-v1-5 vae/config.json
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(
    _class_name="PNDMScheduler",
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)
SD3_MEDIUM = dict(  # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
)
SD3_VAE = dict(
    **{k: v for k, v in SD15_VAE.items() if k not in ("latent_channels", "scaling_factor", "sample_size")},
    latent_channels=16,
    sample_size=1024,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
SD3_SCHEDULER = dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0)

PRIORS = ("adm-256-uncond", "ddpm-celebahq-256", "sd15", "sd3-medium")
SUBJECTS = ("resnet50", "dinov2-vitb14", "clip-vitb16")
QUICK = (
    ("adm-256-uncond", "resnet50", "fp32", False),
    ("adm-256-uncond", "resnet50", "fp32", True),
    ("ddpm-celebahq-256", "dinov2-vitb14", "fp32", False),
    ("ddpm-celebahq-256", "dinov2-vitb14", "fp32", True),
)
# bf16 is not in --quick: on a CPU without AVX512-BF16/AMX (this project's machine) bf16 convolutions are
# emulated, and one celebahq-256 x DINOv2 step did not finish in 900 s (docs/performance.md)


# ---- builders ---------------------------------------------------------------------------------------


def build_prior(name: str, gradient_checkpointing: bool, tiny: bool = False) -> Any:
    """A random-weight prior of the named architecture (``tiny``: the same code path at toy width, for tests)."""
    import torch

    torch.manual_seed(0)
    if name == "adm-256-uncond":
        from fiberscope.priors.adm import ADMConfig, ADMPrior, ADMUNet

        cfg = dict(ADM_256_UNCOND)
        if tiny:
            cfg.update(image_size=16, model_channels=32, channel_mult=(1, 2), attention_ds=(2,), num_head_channels=16)
            cfg.update(num_res_blocks=1)
        net = ADMUNet(ADMConfig(**cfg)).eval().requires_grad_(False)  # type: ignore[arg-type]
        if gradient_checkpointing:
            net.set_gradient_checkpointing(True)
        return ADMPrior(net, info={"random_weights": True}, name=name)
    if name == "ddpm-celebahq-256":
        from diffusers import UNet2DModel

        from fiberscope.priors.diffusers import DiffusersPrior

        cfg = dict(DDPM_CELEBAHQ_256)
        if tiny:
            cfg.update(sample_size=64, block_out_channels=(8, 8, 16, 16, 16, 16), norm_num_groups=4)
        return DiffusersPrior(
            UNet2DModel(**cfg), DDPM_SCHEDULER, gradient_checkpointing=gradient_checkpointing, name=name
        )
    if name in ("sd15", "sd3-medium"):
        return _latent_prior(name, gradient_checkpointing, tiny)
    raise ValueError(f"unknown prior {name!r}; known: {PRIORS}")


def _latent_prior(name: str, gradient_checkpointing: bool, tiny: bool) -> Any:
    import torch
    from diffusers import AutoencoderKL

    from fiberscope.priors.diffusers import DiffusersDenoiser, _Decode, _Encode, schedule_from_scheduler_config
    from fiberscope.priors.latent import LatentPrior

    g = torch.Generator().manual_seed(1)
    vcfg = dict(SD15_VAE if name == "sd15" else SD3_VAE)
    if tiny:
        vcfg.update(block_out_channels=(8, 8), down_block_types=vcfg["down_block_types"][:2], norm_num_groups=4)
        vcfg.update(up_block_types=vcfg["up_block_types"][:2], layers_per_block=1)
    vae = AutoencoderKL(**vcfg)
    if name == "sd15":
        from diffusers import UNet2DConditionModel

        ucfg = dict(SD15_UNET)
        if tiny:
            ucfg.update(sample_size=8, block_out_channels=(8, 16, 16, 16), norm_num_groups=4, cross_attention_dim=8)
        model = UNet2DConditionModel(**ucfg)
        embeds = torch.randn(1, 77, ucfg["cross_attention_dim"], generator=g)  # a fixed "prompt"
        net = DiffusersDenoiser(model, flow=False, embeds=embeds)
        sched = SD15_SCHEDULER
    else:
        from diffusers import SD3Transformer2DModel

        tcfg = dict(SD3_MEDIUM)
        if tiny:
            tcfg.update(sample_size=8, num_layers=1, num_attention_heads=2, attention_head_dim=4)
            tcfg.update(joint_attention_dim=8, caption_projection_dim=8, pooled_projection_dim=8, pos_embed_max_size=8)
        model = SD3Transformer2DModel(**tcfg)
        embeds = torch.randn(1, 333, tcfg["joint_attention_dim"], generator=g)
        pooled = torch.randn(1, tcfg["pooled_projection_dim"], generator=g)
        net = DiffusersDenoiser(model, flow=True, embeds=embeds, pooled=pooled)
        sched = SD3_SCHEDULER
    if gradient_checkpointing:
        for m in (model, vae):
            m.enable_gradient_checkpointing()
    schedule, param = schedule_from_scheduler_config(dict(sched))
    side = model.config.sample_size
    f = 2 ** (len(vcfg["block_out_channels"]) - 1)
    return LatentPrior(
        net,
        schedule,
        param or "eps",
        latent_shape=(model.config.in_channels, side, side),
        decoder=_Decode(vae),
        encoder=_Encode(vae),
        image_shape=(3, side * f, side * f),
        data_range=(-1.0, 1.0),
        shift=float(vcfg.get("shift_factor", 0.0)),
        scale=float(vcfg["scaling_factor"]),
        name=name,
    )


def build_subject(name: str, tiny: bool = False) -> Any:
    """A random-weight subject, through fiberscope's adapters."""
    import torch

    torch.manual_seed(0)
    if name == "resnet50":
        from fiberscope.subjects.torchvision import load_torchvision_subject

        return load_torchvision_subject("resnet18" if tiny else "resnet50", "avgpool", weights=None)
    if name == "dinov2-vitb14":
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        from fiberscope.subjects.library import LibrarySubject
        from fiberscope.subjects.preprocess import from_hf_processor
        from fiberscope.subjects.transformers import features_module

        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2) if tiny else {}
        config = Dinov2Config(image_size=518, patch_size=14, **kw)  # the defaults are ViT-B/14
        model = Dinov2Model(config).eval().requires_grad_(False)
        proc = BitImageProcessor(  # facebook/dinov2-base's preprocessor_config.json
            size={"shortest_edge": 256},
            crop_size={"height": 224, "width": 224},
            do_center_crop=True,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
            resample=3,
            do_convert_rgb=True,
        )
        fn, label = features_module(model, config, "cls")
        return LibrarySubject(fn, input_range=(0.0, 1.0), preprocess=from_hf_processor(proc), name=name, layer=label)
    if name == "clip-vitb16":
        from fiberscope.subjects.open_clip import load_open_clip_subject

        return load_open_clip_subject("ViT-B-16", pretrained=False)
    raise ValueError(f"unknown subject {name!r}; known: {SUBJECTS}")


# ---- measuring one configuration ---------------------------------------------------------------------


class _Stop(Exception):
    pass


class Timers:
    """Forward and backward times of modules, by category, from module hooks."""

    def __init__(self, device: Any):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.acc: dict[str, float] = {}
        self.handles: list[Any] = []

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, key: str, dt: float) -> None:
        self.acc[key] = self.acc.get(key, 0.0) + dt

    def watch(self, module: Any, forward: str, backward: str) -> None:
        """Time ``module``'s forwards (module hooks) and backwards (tensor hooks).

        A backward starts when the gradient of the module's output arrives (a hook on the output
        tensors) and ends when the gradient of its input is complete (a hook on the inputs that
        require grad); module-level backward hooks would miss modules that return dataclasses
        (diffusers' ``UNet2DOutput``).
        """
        import torch

        starts: dict[str, tuple[float, bool]] = {}

        def b_start(grad: Any) -> None:
            starts.setdefault("b", (self.now(), True))

        def b_end(grad: Any) -> None:
            if "b" in starts:
                self.add(backward, self.now() - starts.pop("b")[0])

        def pre(m: Any, args: Any) -> None:
            grad = torch.is_grad_enabled()
            if grad:
                for a in args:
                    if isinstance(a, torch.Tensor) and a.requires_grad:
                        a.register_hook(b_end)
            starts["f"] = (self.now(), grad)

        def post(m: Any, args: Any, out: Any) -> None:
            t0, grad = starts.pop("f", (self.now(), True))
            dt = self.now() - t0
            self.add(forward, dt)
            if not grad:
                self.add("no_grad", dt)
                return
            outs = [out] if isinstance(out, torch.Tensor) else list(out.values() if hasattr(out, "values") else out)
            for o in outs:
                if isinstance(o, torch.Tensor) and o.requires_grad:
                    o.register_hook(b_start)

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def take(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


def _prior_modules(prior: Any) -> tuple[Any, Any]:
    """The prior's denoising network and (latent priors) its decoder."""
    if getattr(prior, "is_latent", False):
        return prior.denoiser, prior.decoder
    kids = list(prior.children())
    return max(kids, key=lambda m: sum(p.numel() for p in m.parameters())), None


def project(a: float, b: float, guided_steps: int, batch: int, steps: int = PAPER_STEPS, inner: int = PAPER_INNER):
    """Seconds per fiber sample: ``(steps·A + guided_steps·inner·B) / batch``."""
    return (steps * a + guided_steps * inner * b) / batch


def split_of(timed: dict[str, float], step: float) -> dict[str, float]:
    """The per-step split (keys :data:`SPLIT_KEYS`), ``rest`` = step − the timed calls."""
    parts = {
        "prior_forward": timed.get("prior_forward", 0.0),
        "prior_backward": timed.get("prior_backward", 0.0),
        "decoder": timed.get("decoder_forward", 0.0) + timed.get("decoder_backward", 0.0),
        "subject": timed.get("subject_forward", 0.0) + timed.get("subject_backward", 0.0),
    }
    parts["rest"] = step - sum(parts.values())
    return parts


def measure(cfg: dict[str, Any], prior: Any = None, subject: Any = None) -> dict[str, Any]:
    """Run one configuration in this process and return its row (models built here unless given)."""
    import resource

    import torch

    import fiberscope as fs

    dev = torch.device(cfg.get("device", "cpu"))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_build = time.perf_counter()
    tiny = bool(cfg.get("tiny"))
    prior = prior if prior is not None else build_prior(cfg["prior"], cfg["gradient_checkpointing"], tiny)
    subject = subject if subject is not None else build_subject(cfg["subject"], tiny)
    prior.to(dev)
    subject.to(dev)
    t_build = time.perf_counter() - t_build
    paper = fs.NDTM.preset("paper-imagenet-dinov2")
    guided = sum(1 for t in paper.times(prior) if paper.gamma_at(t) > 0)
    inner = int(cfg.get("inner_steps", PAPER_INNER))
    # every measured step guided; the preset's sampler knobs that this prior cannot take are adapted
    # (they change no network call: the cost per step is the same)
    changes: dict[str, Any] = {"gamma": 3.0, "inner_steps": inner}
    if not prior.learned_variance:
        changes["variance"] = "small"
    sched = prior.schedule
    if sched.kind != "vp" or getattr(sched, "linear_betas", None) is None:
        changes["ancestral_rescaled"] = False
    if sched.kind == "flow":
        changes.update(sampler="euler", eta=0.0)
    method = dataclasses.replace(paper, **changes)
    timers = Timers(dev)
    net, dec = _prior_modules(prior)
    timers.watch(net, "prior_forward", "prior_backward")
    if dec is not None:
        timers.watch(dec, "decoder_forward", "decoder_backward")
    timers.watch(subject, "subject_forward", "subject_backward")
    warmup, steps = int(cfg.get("warmup", 0)), int(cfg.get("steps", 1))
    want_flops = dev.type == "cuda" or cfg.get("peak_tflops")
    records: list[dict[str, Any]] = []
    flops: dict[str, Any] = {}
    clock = {"t": 0.0}
    run = method.run

    def timed_run(*args: Any, **kw: Any) -> Any:
        timers.take()
        clock["t"] = timers.now()
        return run(*args, **kw)

    def callback(info: dict[str, Any]) -> None:
        t = timers.now()
        step, clock["t"] = t - clock["t"], t
        timed = timers.take()
        if "mode" in flops:  # the step after the measured ones ran under the FLOP counter
            flops["mode"].__exit__(None, None, None)
            flops["total"] = flops["mode"].get_total_flops()
            raise _Stop
        if info["step"] >= warmup:
            records.append({"step": step, "timed": timed})
        if len(records) >= steps:
            if not want_flops:
                raise _Stop
            from torch.utils.flop_counter import FlopCounterMode

            flops["mode"] = FlopCounterMode(display=False)
            flops["mode"].__enter__()
            clock["t"] = timers.now()

    object.__setattr__(method, "run", timed_run)
    bs = int(cfg.get("batch_size", 1))
    shape = tuple(prior.image_shape)
    query = torch.rand((1, *shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with contextlib.suppress(_Stop):
        fs.sample_fiber(
            subject,
            query,
            prior,
            n=bs,
            batch_size=bs,
            method=method,
            device=str(dev),
            autocast="bf16" if cfg["dtype"] == "bf16" else None,
            progress=False,
            callback=callback,
        )
    for h in timers.handles:
        h.remove()
    s_step = sum(r["step"] for r in records) / len(records)
    timed = {k: sum(r["timed"].get(k, 0.0) for r in records) / len(records) for k in records[0]["timed"]}
    a = timed.get("no_grad", 0.0)
    b = (s_step - a) / max(inner, 1)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    row: dict[str, Any] = {
        "prior": cfg["prior"],
        "subject": cfg["subject"],
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "dtype": cfg["dtype"],
        "gradient_checkpointing": bool(cfg["gradient_checkpointing"]),
        "batch_size": bs,
        "peak_memory_gb": round(peak, 3),
        "s_per_step": s_step,
        "split": split_of(timed, s_step),
        "s_per_fiber_paper": project(a, b, guided, bs),
        "s_no_grad_per_step": a,
        "s_per_inner_step": b,
        "inner_steps_measured": inner,
        "steps_measured": len(records),
        "paper_guided_steps": guided,
        "method_changes": {k: v for k, v in changes.items() if k not in ("gamma", "inner_steps")},
        "parameters_m": round(sum(p.numel() for p in prior.parameters()) / 1e6, 1),
        "subject_parameters_m": round(sum(p.numel() for p in subject.parameters()) / 1e6, 1),
        "build_s": t_build,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if "total" in flops:
        row["flops_per_step"] = flops["total"]
        peak_tflops = cfg.get("peak_tflops") or _known_peak(row["device"])
        row["peak_bf16_tflops"] = peak_tflops
        row["mfu"] = flops["total"] / s_step / (peak_tflops * 1e12) if peak_tflops else None
    return row


def _known_peak(device_name: str) -> float | None:
    for k, v in PEAK_BF16_TFLOPS.items():
        if k.lower() in device_name.lower():
            return v
    return None


# ---- driver --------------------------------------------------------------------------------------------


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.quick:
        combos = list(QUICK)
    else:
        pairs = [(p, s) for p in args.priors for s in args.subjects]
        combos = [(p, s, d, c) for p, s in pairs for d in args.dtypes for c in (False, True)]
    base = dict(
        device=args.device,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        inner_steps=args.inner_steps,
        peak_tflops=args.peak_tflops,
    )
    out = []
    for p, s, d, c in combos:
        if p == "sd3-medium" and args.device == "cpu" and not args.force:
            print("skip sd3-medium on the CPU: 8 GB of fp32 weights plus the 1024² VAE backward exceed 24 GB RAM")
            continue
        out.append({**base, "prior": p, "subject": s, "dtype": d, "gradient_checkpointing": c})
    return out


def run_child(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One configuration in a fresh interpreter, so that each peak RSS is its own."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**_empty(cfg), "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
        why = "killed (out of memory?)" if p.returncode in (-9, 137) else tail[0][:300]
        return {**_empty(cfg), "error": why, "wall_s": time.perf_counter() - t0}
    return {**json.loads(lines[-1]), "wall_s": time.perf_counter() - t0}


def _empty(cfg: dict[str, Any]) -> dict[str, Any]:
    row = {k: None for k in ROW_KEYS}
    row.update({k: cfg[k] for k in ("prior", "subject", "dtype", "gradient_checkpointing", "batch_size")})
    row["device"] = cfg["device"]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'prior':<18} {'subject':<14} {'dtype':<5} {'ckpt':<5} {'bs':>3} {'peak GB':>8} {'s/step':>8} "
    head += f"{'prior f':>8} {'prior b':>8} {'dec':>6} {'subj':>6} {'rest':>6} {'h/1000 fib':>10} {'MFU':>6}"
    lines = [head]
    for r in rows:
        if r.get("s_per_step") is None:
            lines.append(
                f"{r['prior']:<18} {r['subject']:<14} {r['dtype']:<5} {r['gradient_checkpointing']!s:<5} "
                f"{r['batch_size']:>3}  failed: {r.get('error')}"
            )
            continue
        sp = r["split"]
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(
            f"{r['prior']:<18} {r['subject']:<14} {r['dtype']:<5} {r['gradient_checkpointing']!s:<5} "
            f"{r['batch_size']:>3} {r['peak_memory_gb']:>8.2f} {r['s_per_step']:>8.2f} {sp['prior_forward']:>8.2f} "
            f"{sp['prior_backward']:>8.2f} {sp['decoder']:>6.2f} {sp['subject']:>6.2f} {sp['rest']:>6.2f} "
            f"{r['s_per_fiber_paper'] * 1000 / 3600:>10.1f} {mfu:>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", default="results/scale", help="directory for scale.json")
    ap.add_argument("--quick", action="store_true", help="ADM-256 x ResNet-50 and celebahq-256 x DINOv2, batch 1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    ap.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=SUBJECTS)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1, help="measured denoising steps per configuration")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default 0 on CPU, 2 on GPU)")
    ap.add_argument("--inner-steps", type=int, default=None, help="Adam steps N (default 5; --quick: 1)")
    ap.add_argument("--peak-tflops", type=float, help="the device's bf16 peak, for MFU on unlisted devices")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--force", action="store_true", help="also run sd3-medium on the CPU")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return 0
    if args.warmup is None:
        args.warmup = 0 if args.device == "cpu" else 2
    if args.inner_steps is None:
        args.inner_steps = 1 if args.quick else PAPER_INNER
    from fiberscope.utils import atomic_write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for cfg in configurations(args):
        print(
            f"running {cfg['prior']} x {cfg['subject']} {cfg['dtype']} ckpt={cfg['gradient_checkpointing']} ...",
            flush=True,
        )
        rows.append(run_child(cfg, args.timeout))
        atomic_write_json(out / "scale.json", rows)  # after every configuration: a partial run keeps its rows
    print(table(rows))
    print(f"{len(rows)} configurations in {time.perf_counter() - t0:.0f} s -> {out / 'scale.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

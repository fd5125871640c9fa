"""The bench's run: every unit (a method or a prior-free reference on a pair, one seed) computed or read back.

A unit is written atomically with a hash of its settings (:func:`~fiberscope.bench.pair.settings_hash`),
which include a fingerprint of the prior's and the subject's weights; a rerun skips finished units
whose settings did not change, so an interrupted bench resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import ModelNotAvailableError
from ..guidance import GuidanceError, GuidanceMethod
from ..loading import current_spec
from ..methods import method_from_spec
from ..metrics.augment import augment
from ..report.bench import write_outputs
from ..utils import atomic_write_bytes, atomic_write_json
from .aggregate import aggregate
from .config import REFERENCES, BenchConfig, method_applies, slug
from .pair import Pair, bench_batch_size, read_json, settings_hash

__all__ = ["run_bench", "unit_path"]


def _unit_png(pair: Pair, images: torch.Tensor, title: str) -> bytes:
    from ..report.grid import captioned_grid

    n = pair.cfg.n
    rows, caps = [], []
    for q in range(min(3, len(pair.query_idx))):
        rows.append([pair.images[pair.query_idx[q]], *images[q * n : (q + 1) * n]])
        caps.append(["query"] + [""] * n)
    scale = max(1, 56 // max(images.shape[-1], 1))
    img = captioned_grid(rows, caps, data_range=pair.prior.data_range, scale=scale, gap_after=(0,), title=title)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def unit_path(out: Path, pair_key: str, name: str, seed: int) -> Path:
    """Where one unit (a method or reference ``name`` on a pair, in one seed) is written, without suffix."""
    return out / "units" / pair_key / f"{slug(name)}__seed{seed}"


def _run_unit(pair: Pair, name: str, spec: Any, seed: int, out: Path) -> tuple[dict[str, Any], bool]:
    """Load a finished unit, or run and save it. Returns (record, computed_now)."""
    cfg = pair.cfg
    method: GuidanceMethod | None = None
    if name not in REFERENCES:
        method = method_from_spec(spec, None, pair.pair.prior)
        mcfg = method.config()
    else:
        mcfg = {"method": name}
    settings = pair.unit_settings(name, mcfg, seed)
    h = settings_hash(settings)
    base = unit_path(out, pair.pair.key, name, seed)
    old = read_json(base.with_suffix(".json"))
    if old is not None and old.get("hash") == h:
        return {**old, "pair": asdict(pair.pair)}, False  # the same settings, its specs spelled as today
    pair.load()
    stats = pair.stats(out)
    t0 = time.perf_counter()
    counts: dict[str, float] = {}
    states = None
    rows = len(pair.query_idx) * cfg.n
    if name == "nn":
        idx = [i for lst in stats["knn_indices"] for i in lst]
        images = pair.images[idx]
        if len(idx) != rows:  # fewer bank entries than n: repeat the last neighbour
            images = torch.cat([pair.images[lst + [lst[-1]] * (cfg.n - len(lst))] for lst in stats["knn_indices"]])
        counts = {"subject_forwards": stats["bank_size"] / cfg.n}
        fe = stats["bank_size"] / cfg.n
    elif name == "augment":
        g = torch.Generator().manual_seed(seed)
        kw = pair.augment_kwargs()
        dr = pair.prior.data_range or (-1.0, 1.0)
        images = torch.cat([augment(pair.images[i : i + 1], cfg.n, g, data_range=dr, **kw) for i in pair.query_idx])
        fe = 0.0
    else:
        assert method is not None
        try:
            images, states, counter = pair.sample(method, seed)
        except GuidanceError as e:  # a diverging setting fails its unit, not the bench
            rec = {"hash": h, "method": name, "method_config": mcfg, "pair": asdict(pair.pair), "seed": seed}
            rec["error"] = str(e)
            atomic_write_json(base.with_suffix(".json"), rec)
            return rec, True
        counts = {k: v / rows for k, v in counter.as_dict().items()}
        fe = counter.forward_equivalents() / rows
    seconds = time.perf_counter() - t0
    rec = {
        "hash": h,
        "method": name,
        "method_config": mcfg,
        "pair": asdict(pair.pair),
        "seed": seed,
        "run_seeds": pair.run_seeds(seed),
        "n": cfg.n,
        "queries": len(pair.query_idx),
        "counts": counts,
        "forward_equivalents": fe,
        "seconds": seconds,
        "seconds_per_sample": seconds / rows,
        **pair.measure(images),
    }
    if method is not None:  # sample_fiber(..., seed=run_seeds[q], batch_size=this) draws query q's samples again
        rec["batch_size"] = bench_batch_size(cfg.batch_size, rows)
    arrays: dict[str, Any] = {"images": images.numpy(), "query_indices": pair.query_idx.numpy()}
    if states is not None:
        arrays["states"] = states.numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(base.with_suffix(".npz"), buf.getvalue())
    with contextlib.suppress(Exception):  # a grid is a convenience; never lose a unit over it
        atomic_write_bytes(base.with_suffix(".png"), _unit_png(pair, images, f"{name} · {pair.pair.key} · seed {seed}"))
    atomic_write_json(base.with_suffix(".json"), rec)  # last: its presence marks the unit finished
    return rec, True


def run_bench(
    config: BenchConfig | Mapping[str, Any],
    out: str | Path,
    *,
    objects: Mapping[str, Any] | None = None,
    data: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the bench matrix and write its table, JSON and plots into ``out``.

    Args:
        config: a :class:`BenchConfig` or its mapping form.
        out: output directory.
        objects: models by the names used in the config (``{"toy-prior": prior, "toy-cnn": module}``),
            for priors/subjects/references that are not loadable by spec.
        data: test images per data set, ``{name: (images in the prior's range, labels)}``
            (default: the packaged MNIST / Fashion-MNIST / colour-MNIST test splits).
        resume: skip units already finished with the same settings (False: recompute all).
        progress: print one line per unit.
        log: where progress lines go (default: stderr).

    Returns:
        The ``results.json`` record (config, per-pair statistics, one row per method and pair).
    """
    cfg = config if isinstance(config, BenchConfig) else BenchConfig.from_dict(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    def _n_units(pspec: Any) -> int:
        return sum(
            len(cfg.seeds[:1] if n == "nn" else cfg.seeds)
            for n in list(cfg.methods) + list(cfg.references)
            if not (n in cfg.methods and not method_applies(cfg.methods[n], pspec))
        )

    # one bar over all units; the per-unit lines are written above it
    bar = tqdm(
        total=sum(_n_units(p) for p in cfg.resolved_pairs()),
        desc="bench",
        unit="unit",
        file=sys.stderr,
        disable=not progress or log is not None,
    )
    say = log or (lambda s: bar.write(s, file=sys.stderr))
    if not progress:
        say = lambda s: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if not resume:
        for p in (out / "units").glob("*/*.json"):
            p.unlink()
    atomic_write_json(out / "config.json", cfg.to_dict())
    pairs_out, rows = [], []
    t_start = time.perf_counter()
    names = list(cfg.methods) + list(cfg.references)
    objs = {current_spec(str(k), warn=False): v for k, v in (objects or {}).items()}  # named as the config names them
    skipped = []
    for pspec in cfg.resolved_pairs():
        pair = Pair(cfg, pspec, objs, data or {}, say)
        units: dict[str, list[dict[str, Any]]] = {}
        done_here = 0
        try:
            for name in names:
                if name in cfg.methods and not method_applies(cfg.methods[name], pspec):
                    continue
                seeds = cfg.seeds[:1] if name == "nn" else cfg.seeds
                for seed in seeds:
                    rec, fresh = _run_unit(pair, name, cfg.methods.get(name), seed, out)
                    bar.update(1)
                    done_here += 1
                    units.setdefault(name, []).append(rec)
                    if "error" in rec:
                        say(f"[bench] {pspec.key} {name} seed {seed}: FAILED ({rec['error'][:200]})")
                        continue
                    state = f"{rec['seconds']:.1f}s" if fresh else "cached"
                    loss = rec["fiber_loss"][cfg.metric]
                    say(f"[bench] {pspec.key} {name} seed {seed}: {cfg.metric} {loss:.4g} ({state})")
        except ModelNotAvailableError as e:  # a model of the zoo not trained yet: the other pairs go on
            say(f"[bench] {pspec.key}: skipped, {e}")
            bar.update(_n_units(pspec) - done_here)
            skipped.append({"pair": pspec.key, "reason": str(e)})
            continue
        stats = pair.stats(out) if pair.loaded else (read_json(out / "pairs" / f"{pspec.key}.json") or {})
        pairs_out.append(stats)
        rows += [aggregate(name, recs, stats, cfg) for name, recs in units.items()]
    bar.close()
    result = {
        "fiberscope_bench": 1,
        "config": cfg.to_dict(),
        "pairs": pairs_out,
        "rows": rows,
        "skipped": skipped,
        "seconds": time.perf_counter() - t_start,
    }
    result["fiberscope"] = __version__
    result["torch"] = torch.__version__
    write_outputs(result, out)
    return result

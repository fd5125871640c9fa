"""The nearest-neighbour reference of an audit's queries over a folder of real images, and the table beside it.

``fiberscope neighbours AUDIT_OUT --bank IMAGES/`` reads every finished unit of an audit (or the
results of ``fiberscope sample``), embeds the bank images with the unit's own subject and layer,
prepared exactly as the queries were (``load_query`` to the prior's image size and data range), and
finds for each query the bank image whose φ is closest in L2, the query itself excluded (any bank
image whose mean absolute pixel difference to the query is below ``identity_threshold``, the
paper's 1e-4). It writes ``neighbours.json`` (one row per unit and a summary) and
``neighbours.md`` (the fiber-loss-vs-nearest-neighbour table) next to the results.

The paper's Table 5 reports the mean fiber loss of the samples beside the mean fiber loss of
each query's nearest neighbour (DINOv2 / ImageNet: 273 against 1225), both squared L2.

Example:
    >>> from fiberscope.audit.neighbours import audit_neighbours          # doctest: +SKIP
    >>> table = audit_neighbours("audit-out", "imagenet/val")             # doctest: +SKIP
    >>> table["summary"]["fiber_loss_mean"], table["summary"]["nn_loss_mean"]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..utils import atomic_write_json, atomic_write_text

__all__ = ["audit_neighbours", "bank_files", "neighbours_markdown"]

THUMB = 8  # side of the pooled thumbnails that pre-select candidates for the identity check


def bank_files(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files (PNG, JPEG, ... and .npy) under ``folder``, sorted (sub-folders too when ``recursive``)."""
    from ..data.query import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    it = root.rglob("*") if recursive else root.iterdir()
    files = sorted(
        p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".npy"} and not p.name.startswith(".")
    )
    if not files:
        raise FileNotFoundError(f"image folder {root} holds no images (PNG, JPEG, ... or .npy)")
    return files


def _units(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    from ..report.results import find_results

    out = []
    for d in find_results(results):
        try:
            rec = json.loads((d / "record.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "fiber_loss" in rec and (d / "samples.npz").is_file():
            out.append((d, rec))
    return out


def _setting(rec: dict[str, Any], subject: str | None, layer: Any) -> tuple[str, Any]:
    cfg = rec.get("config", {})
    unit = (cfg.get("audit") or {}).get("unit") or {}
    spec = subject or unit.get("subject") or (cfg.get("subject") or {}).get("name")
    if not spec or not isinstance(spec, str):
        raise ValueError("a result does not record its subject spec: pass --subject (and --layer)")
    lay = layer if subject is not None else unit.get("layer", (cfg.get("subject") or {}).get("layer"))
    return spec, lay


def _embed_bank(
    files: list[Path],
    subject: Any,
    image_shape: tuple[int, ...],
    data_range: tuple[float, float] | None,
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
    """φ of every readable bank image, their thumbnails, the indices kept and the files skipped."""
    from ..data.query import QueryError, load_query

    feats, thumbs, kept, skipped = [], [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="embedding the bank", unit="img", leave=False, dynamic_ncols=True)
    for start in range(0, len(files), batch_size):
        imgs, idx = [], []
        for i in range(start, min(start + batch_size, len(files))):
            try:
                imgs.append(load_query(files[i], image_shape=image_shape, data_range=data_range, device=device))
                idx.append(i)
            except QueryError as e:
                skipped.append(f"{files[i]}: {e}")
        if imgs:
            x = torch.cat(imgs)
            with torch.no_grad():
                feats.append(subject(x, data_range).float().cpu())
            thumbs.append(F.adaptive_avg_pool2d(x.float(), THUMB).flatten(1).cpu())
            kept += idx
        if bar is not None:
            bar.update(min(batch_size, len(files) - start))
    if bar is not None:
        bar.close()
    if not feats:
        raise FileNotFoundError(f"no readable image in the bank ({len(skipped)} unreadable, e.g. {skipped[0]})")
    return torch.cat(feats), torch.cat(thumbs), kept, skipped


def _identical(
    query: torch.Tensor,
    thumbs: torch.Tensor,
    kept: list[int],
    files: list[Path],
    image_shape: tuple[int, ...],
    data_range: tuple[float, float] | None,
    threshold: float,
) -> list[int]:
    """Positions (into ``kept``) of bank images equal to ``query`` (mean |Δ| < threshold in data space).

    The pooled thumbnails differ by at most the full images' mean difference, so they pre-select the
    candidates cheaply; those are reloaded and compared in full.
    """
    from ..data.query import load_query

    q = query.float().reshape(1, *query.shape[-3:])
    qt = F.adaptive_avg_pool2d(q, THUMB).flatten(1)
    cand = ((thumbs - qt).abs().mean(1) < threshold).nonzero().flatten().tolist()
    same = []
    for j in cand:
        img = load_query(files[kept[j]], image_shape=image_shape, data_range=data_range).float()
        if float((img - q).abs().mean()) < threshold:
            same.append(j)
    return same


def audit_neighbours(
    results: str | os.PathLike[str],
    bank: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    subject: str | None = None,
    layer: Any = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    identity_threshold: float = 1e-4,
    recursive: bool = True,
    progress: bool = False,
    write: bool = True,
    load_subject: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """The nearest-neighbour reference of every finished result under ``results``; writes the table.

    Args:
        results: an audit's output directory (``fiberscope audit ... --out DIR``) or any folder of
            ``fiberscope sample`` results.
        bank: the real images searched: a folder (recursively) or a list of image files.
        subject, layer: the subject to embed with (default: each unit's own, from its record).
        device: where to run the subject (default: CPU).
        batch_size: bank images per forward pass.
        identity_threshold: bank images closer than this to the query (mean absolute pixel
            difference in the prior's data space) are the query itself and are skipped.
        recursive: search sub-folders of ``bank``.
        progress: a progress bar while embedding the bank.
        write: write ``neighbours.json`` and ``neighbours.md`` into ``results``.
        load_subject: the subject loader (default :func:`fiberscope.load_subject`).

    Returns:
        ``{"rows": [...], "summary": {...}, "skipped_bank_files": [...]}``; each row has the unit's
        directory, query, label, ``n``, ``metric``, ``fiber_loss_mean``/``std``/``min``, ``nn_loss``,
        ``nn_image``, ``ratio`` (mean fiber loss / NN loss), ``below_nn`` (fraction of samples with a
        lower loss than the NN) and ``excluded`` (bank images identical to the query).

    Raises:
        FileNotFoundError: no finished results, or no images in the bank.
        ValueError: a result does not record its subject and none is given.
    """
    from ..losses import get_loss

    if load_subject is None:
        from ..loading import load_subject as _load_subject

        load_subject = _load_subject
    root = Path(results)
    units = _units(root) if root.is_dir() else []
    if not units:
        raise FileNotFoundError(
            f"{root} holds no finished fiber results (record.json + samples.npz); run `fiberscope audit` first"
        )
    if isinstance(bank, (str, os.PathLike)):
        bank_root: Path | None = Path(bank)
        files = bank_files(bank, recursive=recursive)
    else:
        bank_root = None
        files = [Path(f) for f in bank]
        if not files:
            raise FileNotFoundError("the bank is empty; give a folder of real images")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    settings: dict[str, tuple[str, Any, tuple[int, ...], tuple[float, float] | None]] = {}
    for d, rec in units:
        spec, lay = _setting(rec, subject, layer)
        shape = tuple(int(v) for v in (rec.get("config", {}).get("prior", {}).get("image_shape") or rec["image_shape"]))
        dr = tuple(rec["data_range"]) if rec.get("data_range") else None
        key = json.dumps([spec, lay, shape, dr], sort_keys=True)
        groups.setdefault(key, []).append((d, rec))
        settings[key] = (spec, lay, shape, dr)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for key, members in groups.items():
        spec, lay, shape, dr = settings[key]
        subj = load_subject(spec, lay, device=dev)
        feats, thumbs, kept, skip = _embed_bank(files, subj, shape, dr, dev, batch_size, progress)
        skipped += skip
        flat = feats.flatten(1)
        for d, rec in members:
            with np.load(d / "samples.npz", allow_pickle=False) as z:
                target = torch.from_numpy(z["target"]).float()
                query = torch.from_numpy(z["query"]).float()
            same = _identical(query, thumbs, kept, files, shape, dr, identity_threshold)
            dist = ((flat - target.flatten(1)) ** 2).sum(1)
            dist[same] = math.inf
            if bool(torch.isinf(dist).all()):
                raise ValueError(f"every bank image is identical to the query of {d}; give a larger bank")
            j = int(dist.argmin())
            metric = rec.get("metric", "sq_l2")
            nn_loss = float(get_loss(metric)(feats[j : j + 1], target)[0])
            fl = np.asarray(rec["fiber_loss"], dtype=np.float64)
            unit = ((rec.get("config") or {}).get("audit") or {}).get("unit") or {}
            audit = (rec.get("config") or {}).get("audit") or {}
            nn_file = files[kept[j]]
            rows.append(
                {
                    "dir": os.path.relpath(d, root),
                    "query": unit.get("query", d.name),
                    "label": audit.get("label"),
                    "subject": spec,
                    "layer": lay,
                    "n": len(fl),
                    "metric": metric,
                    "fiber_loss_mean": float(fl.mean()),
                    "fiber_loss_std": float(fl.std()) if len(fl) > 1 else 0.0,
                    "fiber_loss_min": float(fl.min()),
                    "nn_loss": nn_loss,
                    "nn_image": str(nn_file.relative_to(bank_root) if bank_root is not None else nn_file),
                    "ratio": float(fl.mean()) / nn_loss if nn_loss > 0 else math.inf,
                    "below_nn": float((fl < nn_loss).mean()),
                    "excluded": len(same),
                }
            )
    rows.sort(key=lambda r: (str(r["subject"]), str(r["query"]), r["dir"]))
    table = {
        "fiberscope_neighbours": 1,
        "results": str(root),
        "bank": str(bank_root) if bank_root is not None else [str(f) for f in files],
        "bank_size": len(files) - len(skipped),
        "identity_threshold": identity_threshold,
        "rows": rows,
        "summary": _summary(rows),
        "skipped_bank_files": skipped,
    }
    if write:
        atomic_write_json(root / "neighbours.json", table)
        atomic_write_text(root / "neighbours.md", neighbours_markdown(table))
    return table


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (subject, layer, metric): means over queries, as the paper's Table 5 reports them."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = json.dumps([r["subject"], r["layer"], r["metric"]])
        out.setdefault(k, {"subject": r["subject"], "layer": r["layer"], "metric": r["metric"], "rows": []})
        out[k]["rows"].append(r)
    lines = []
    for s in out.values():
        rs = s.pop("rows")
        fl = np.array([r["fiber_loss_mean"] for r in rs])
        nn = np.array([r["nn_loss"] for r in rs])
        ratio = np.array([r["ratio"] for r in rs])
        lines.append(
            {
                **s,
                "queries": len(rs),
                "samples": int(sum(r["n"] for r in rs)),
                "fiber_loss_mean": float(fl.mean()),
                "nn_loss_mean": float(nn.mean()),
                "ratio_of_means": float(fl.mean() / nn.mean()) if nn.mean() > 0 else math.inf,
                "ratio_median": float(np.median(ratio)),
                "queries_below_nn": float((fl < nn).mean()),
            }
        )
    return lines


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def neighbours_markdown(table: dict[str, Any], max_rows: int | None = None) -> str:
    """The summary and per-query table of :func:`audit_neighbours` as Markdown."""
    lines = [
        "# Fiber loss against the nearest real image",
        "",
        f"Bank: `{table['bank'] if isinstance(table['bank'], str) else 'a list of files'}` "
        f"({table['bank_size']} images; the query itself excluded at mean |Δ| < {table['identity_threshold']:g}).",
        "",
        "| subject | layer | metric | queries | samples | fiber loss (mean) | nearest neighbour (mean) | ratio | "
        "median ratio | queries below NN |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in table["summary"]:
        lines.append(
            f"| `{s['subject']}` | {s['layer'] or ''} | {s['metric']} | {s['queries']} | {s['samples']} | "
            f"{_fmt(s['fiber_loss_mean'])} | {_fmt(s['nn_loss_mean'])} | {_fmt(s['ratio_of_means'])} | "
            f"{_fmt(s['ratio_median'])} | {100 * s['queries_below_nn']:.0f} % |"
        )
    rows = table["rows"] if max_rows is None else table["rows"][:max_rows]
    lines += [
        "",
        "| query | label | n | fiber loss (mean ± std) | min | nearest neighbour | NN loss | ratio | below NN |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['query']}` | {r['label'] or ''} | {r['n']} | {_fmt(r['fiber_loss_mean'])} ± "
            f"{_fmt(r['fiber_loss_std'])} | {_fmt(r['fiber_loss_min'])} | `{r['nn_image']}` | {_fmt(r['nn_loss'])} | "
            f"{_fmt(r['ratio'])} | {100 * r['below_nn']:.0f} % |"
        )
    if max_rows is not None and len(table["rows"]) > max_rows:
        lines.append(f"| … {len(table['rows']) - max_rows} more rows in neighbours.json | | | | | | | | |")
    if table["skipped_bank_files"]:
        lines += ["", f"{len(table['skipped_bank_files'])} bank file(s) could not be read and were skipped:"]
        lines += [f"- {s}" for s in table["skipped_bank_files"][:20]]
    return "\n".join(lines) + "\n"

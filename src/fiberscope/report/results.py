"""``fiberscope report DIR``: one HTML page for every fiber result (``record.json``) under a directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import OutputWriteError
from ..utils import atomic_write_text
from .html import Report

__all__ = ["find_results", "write_results_report"]


def find_results(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) holding a complete result (``record.json``).

    Hidden directories (an audit's ``.partial-*`` units still being written) are skipped.
    """
    return sorted(
        p.parent
        for p in root.rglob("record.json")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _audit_problems(root: Path) -> list[list[Any]]:
    """Rows (line, status, unit, error) for the failed, invalid and pending units of an audit's ``summary.jsonl``."""
    path = root / "summary.jsonl"
    if not path.is_file():
        return []
    rows: list[list[Any]] = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            r = json.loads(text)
        except ValueError:
            continue
        if not isinstance(r, dict) or r.get("status") == "done":
            continue
        unit = r.get("text") if r.get("status") == "invalid" else f"{r.get('query')} · {r.get('subject')}"
        rows.append([r.get("line", ""), r.get("status", ""), unit or "", r.get("error") or ""])
    return rows


def _describe(cfg: dict[str, Any], key: str) -> str:
    v = cfg.get(key) or {}
    if isinstance(v, dict):
        name = v.get("name", "?")
        layer = v.get("layer")
        return f"{name}" + (f" [{layer}]" if layer else "")
    return str(v)


def _unguided_reference(cfg: dict[str, Any], cache: dict[str, Any], n: int) -> Any:
    """Unguided samples of the result's prior, drawn once per prior, for a builtin prior (else None)."""
    name = (cfg.get("prior") or {}).get("name") if isinstance(cfg.get("prior"), dict) else None
    if not isinstance(name, str) or not name.startswith("builtin:"):
        return None
    if name not in cache:
        from ..analysis.invariances import unguided_samples

        try:
            cache[name] = unguided_samples(name, max(8, n), seed=1)
        except Exception:  # a missing or broken prior must not stop the report
            cache[name] = None
    return cache[name]


def write_results_report(
    results: Path | str,
    out: Path | str | None = None,
    title: str | None = None,
    *,
    invariances: bool = True,
    unguided_reference: bool = True,
) -> Path:
    """Write ``report.html`` for the results under ``results``; returns its path.

    Args:
        results: a directory holding results (``record.json``), at any depth.
        out: where to write the page (default ``RESULTS/report.html``).
        title: the page title.
        invariances: measure and show each fiber's invariance ranking (:func:`~fiberscope.probe_invariances`).
        unguided_reference: for results of a builtin prior, draw unguided samples (once per prior) as
            the ranking's reference; random augmentations of the query are always a reference.
    """
    from ..analysis.invariances import probe_invariances
    from ..api import FiberSamples
    from ..audit.store import check_result
    from .invariances import add_fiber_section

    root = Path(results)
    if not root.is_dir():
        raise FileNotFoundError(f"results directory {root} does not exist")
    dirs = find_results(root)
    if not dirs:
        raise FileNotFoundError(
            f"no fiberscope results (record.json) under {root}; point it at the --out of `fiberscope sample` "
            "or `fiberscope audit`"
        )
    rep = Report(title or f"fiberscope results: {root.name}", f"{len(dirs)} fiber(s) under {root.resolve()}")
    rep.paragraph(
        "Each grid shows the query, then its fiber samples with their fiber loss (squared L2 distance "
        "between the sample's features and the query's, unless stated otherwise). What varies across the "
        "samples is what the subject ignores. Under each grid: where the samples vary, whether each sample is "
        "in the fiber, and how much of the variation each named transformation explains (the invariance "
        "ranking, against unguided samples of the prior and random augmentations of the query).",
        cls="note",
    )
    summary: list[list[Any]] = []
    refs: dict[str, Any] = {}
    for d in dirs:
        rel = os.path.relpath(d, root)
        # the same check as the audit's resume and summary.jsonl: a record that is well formed and,
        # when it lists its files, every file at its recorded size
        check = check_result(d, require_files=False)
        try:
            if not check.ok:
                raise ValueError(check.problem)
            res = FiberSamples.load(d)
        except Exception as e:  # a damaged result must not hide the others
            rep.heading(rel, level=3)
            why = f"{type(e).__name__}: {e}" if check.ok else f"damaged: {e}"
            rep.paragraph(f"could not read this result: {why}", cls="warn")
            summary.append([rel, "unreadable" if check.ok else "damaged", "", "", "", ""])
            continue
        cfg = res.config
        method = (cfg.get("method") or {}).get("method", "?")
        rep.heading(rel if rel != "." else root.name, level=3)
        audit = cfg.get("audit") if isinstance(cfg.get("audit"), dict) else None
        if audit and isinstance(audit.get("unit"), dict):  # a unit of `fiberscope audit`: show it as written
            u = audit["unit"]
            label = f" · label {audit['label']}" if audit.get("label") else ""
            rep.paragraph(f"query {u.get('query')} · seed {u.get('seed')} · method spec {u.get('method')}{label}")
            if audit.get("redone"):
                rep.paragraph(f"redone: the earlier result of this unit was damaged ({audit['redone']})", cls="warn")
        rep.paragraph(
            f"subject {_describe(cfg, 'subject')} · prior {_describe(cfg, 'prior')} · method {method} · "
            f"{len(res)} samples · {res.timings.get('total', 0):.1f} s"
        )
        for w in res.warnings:  # e.g. the samples were not guided (NotGuidedWarning)
            rep.paragraph(f"warning: {w}", cls="warn")
        inv = None
        if invariances:
            ung = _unguided_reference(cfg, refs, len(res)) if unguided_reference else None
            try:
                inv = probe_invariances(
                    res, unguided=ung if ung is not None and ung.shape[1:] == res.images.shape[1:] else None
                )
            except ValueError as e:  # e.g. images too small to probe
                rep.paragraph(f"invariances not measured: {e}", cls="warn")
        add_fiber_section(rep, res, inv=inv, grid_caption="query | fiber samples with their fiber loss")
        fl = res.fiber_loss
        top = f"{inv.ranking[0][0]} ({inv.ranking[0][1]:.2f})" if inv is not None and inv.ranking else ""
        summary.append([rel, _describe(cfg, "subject"), method, float(fl.mean()), float(fl.min()), top])
        rep.details("record.json", json.dumps(res.record(), indent=1)[:20000])
    rep.heading("Summary")
    rep.table(["result", "subject", "method", "fiber loss (mean)", "best", "varies most in"], summary)
    problems = _audit_problems(root)
    if problems:
        rep.heading("Units not finished")
        rep.paragraph(
            "From the audit's summary.jsonl: failed units (rerun the audit after fixing the cause), damaged "
            "results (rerun the audit: they are redone), bad manifest lines (skipped), and units still pending "
            "(another shard, or an interrupted run).",
            cls="warn",
        )
        rep.table(["line", "status", "unit", "error"], problems, left=4)
    path = Path(out) if out else root / "report.html"
    try:
        atomic_write_text(path, rep.render())
    except OSError as e:  # exit 6 in the CLI: "cannot write output: ...; choose another --out"
        raise OutputWriteError(e.errno, f"{e.strerror} (writing {path})") from e
    return path

"""Throw bad and edge inputs at the ``fiberscope`` command and count how each one ends.

Every case runs ``fiberscope.cli.main`` in-process on tiny models (an 8×8 diffusers UNet, a tiny
``builtin:mnist-cnn``), under an address-space limit so that an input which tries a huge allocation
fails fast instead of swapping. An input must end with a documented code and one error line; exit 1
("internal error", reserved for bugs), an escaped exception or a timeout is a finding.

    PYTHONPATH=src python benchmarks/bad_inputs.py                 # table + benchmarks/bad_inputs.json
    PYTHONPATH=src python benchmarks/bad_inputs.py --only sample-  # the cases whose name starts so

Columns: case, exit code, the first error line (truncated). The JSON holds every case's code,
message and whether its stderr held raw control characters.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FAST = ["--steps", "2", "--inner-steps", "1", "--n", "1", "-q", "--device", "cpu"]
FAST_METHOD = {"name": "ndtm", "steps": 2, "inner_steps": 1, "lr": 0.05, "gamma": 1.0}


class Timeout(BaseException):
    pass


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def thin_png(width: int, height: int) -> bytes:
    """A valid grey PNG of ``width × height`` zeros: a few kB for millions of pixels."""
    raw = b"".join(b"\0" + b"\0" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def build(root: Path) -> dict[str, Any]:
    """Tiny models, broken copies of them, and bad query files under ``root``."""
    from PIL import Image

    from audit_assets import make_assets

    a = make_assets(root / "assets")
    prior = a.prior
    p: dict[str, Any] = {"assets": a, "prior": prior, "q": a.queries[0], "root": root}

    def broken(name: str, fn: Callable[[Path], None]) -> Path:
        d = root / "priors" / name
        shutil.copytree(prior, d)
        fn(d)
        return d

    w = "unet/diffusion_pytorch_model.safetensors"

    def cfg_edit(rel: str, **kv: Any) -> Callable[[Path], None]:
        def f(d: Path) -> None:
            c = json.loads((d / rel).read_text())
            c.update(kv)
            (d / rel).write_text(json.dumps(c))

        return f

    def wrong_shape(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        sd = load_file(str(d / w))
        k = next(iter(sd))
        sd[k] = sd[k].new_zeros(tuple(s + 1 for s in sd[k].shape))
        save_file(sd, str(d / w))

    p["priors"] = {
        "zero-byte-weights": broken("zero", lambda d: (d / w).write_bytes(b"")),
        "truncated-weights": broken("trunc", lambda d: (d / w).write_bytes((d / w).read_bytes()[:5000])),
        "garbage-weights": broken("garbage", lambda d: (d / w).write_bytes(os.urandom(4000))),
        "wrong-shape-weights": broken("shape", wrong_shape),
        "missing-key-weights": broken("missing", lambda d: _drop_key(d / w)),
        "scheduler-not-object": broken(
            "schedlist", lambda d: (d / "scheduler/scheduler_config.json").write_text("[1]")
        ),
        "scheduler-broken-json": broken("schedjson", lambda d: (d / "scheduler/scheduler_config.json").write_text("{")),
        "scheduler-prediction-nonsense": broken(
            "pred", cfg_edit("scheduler/scheduler_config.json", prediction_type="nonsense")
        ),
        "scheduler-betas-nonsense": broken("betas", cfg_edit("scheduler/scheduler_config.json", beta_schedule="zzz")),
        "scheduler-timesteps-0": broken("t0", cfg_edit("scheduler/scheduler_config.json", num_train_timesteps=0)),
        "unet-config-broken": broken("unetjson", lambda d: (d / "unet/config.json").write_text("{oops")),
        "unet-config-not-object": broken("unetlist", lambda d: (d / "unet/config.json").write_text("3")),
        "unet-config-missing": broken("unetmissing", lambda d: (d / "unet/config.json").unlink()),
        "unet-class-unknown": broken("unetcls", cfg_edit("unet/config.json", _class_name="NoSuchModel")),
        "sample-size-0": broken("ss0", cfg_edit("unet/config.json", sample_size=0)),
        "sample-size-neg": broken("ssneg", cfg_edit("unet/config.json", sample_size=-5)),
        "sample-size-huge": broken("sshuge", cfg_edit("unet/config.json", sample_size=10**6)),
        "sample-size-string": broken("ssstr", cfg_edit("unet/config.json", sample_size="big")),
        "model-index-broken": broken("mi", lambda d: (d / "model_index.json").write_text("{")),
        "no-scheduler": broken("nosched", lambda d: shutil.rmtree(d / "scheduler")),
        "empty-dir": broken("empty", lambda d: [shutil.rmtree(x) if x.is_dir() else x.unlink() for x in d.iterdir()]),
    }
    q = root / "queries"
    q.mkdir()
    files: dict[str, Any] = {}
    fifo = q / "fifo.png"
    os.mkfifo(fifo)
    files["fifo"] = fifo
    files["dev-zero"] = "/dev/zero"
    files["proc-file"] = "/proc/self/status"
    np.save(q / "hwc5.npy", np.zeros((28, 28, 5), np.uint8))
    files["hwc5"] = q / "hwc5.npy"
    (q / "thin.png").write_bytes(thin_png(2_000_000, 1))
    files["thin-1x2M"] = q / "thin.png"
    (q / "tall.png").write_bytes(thin_png(1, 2_000_000))
    files["tall-2Mx1"] = q / "tall.png"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.rand(16, 16).astype(np.float32), mode="F").save(q / "f01.tif")
    files["tiff-F-0-1"] = q / "f01.tif"
    Image.fromarray((rng.rand(16, 16) * 255).astype(np.float32), mode="F").save(q / "f255.tif")
    files["tiff-F-0-255"] = q / "f255.tif"
    Image.fromarray((rng.rand(16, 16) * 4000 - 2000).astype(np.float32), mode="F").save(q / "fwide.tif")
    files["tiff-F-wide"] = q / "fwide.tif"
    Image.fromarray((rng.rand(16, 16) * 2**31).astype(np.int32), mode="I").save(q / "i32.tif")
    files["tiff-I-32"] = q / "i32.tif"
    Image.fromarray((rng.rand(16, 16) * 65535).astype(np.uint16)).save(q / "i16.png")
    files["png-I16"] = q / "i16.png"
    for name, arr in {
        "npy-float-255": rng.rand(8, 8).astype(np.float32) * 255,
        "npy-bool": rng.rand(8, 8) > 0.5,
        "npy-complex": np.zeros((8, 8), np.complex64),
        "npy-0d": np.array(3.0),
        "npy-4d": np.zeros((1, 1, 8, 8), np.float32),
        "npy-nan": np.full((8, 8), np.nan, np.float32),
        "npy-int64": (rng.rand(8, 8) * 1e12).astype(np.int64),
        "npy-empty": np.zeros((0, 8), np.float32),
        "npy-1x1": np.zeros((1, 1), np.uint8),
        "npy-chw-2": np.zeros((2, 8, 8), np.uint8),
    }.items():
        np.save(q / f"{name}.npy", arr)
        files[name] = q / f"{name}.npy"
    p["files"] = files
    return p


def _drop_key(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    sd.pop(next(iter(sd)))
    save_file(sd, str(path))


def cases(p: dict[str, Any]) -> list[tuple[str, list[str]]]:
    a = p["assets"]
    root: Path = p["root"]
    out = root / "out"
    prior = str(p["prior"])
    q = str(p["q"])

    def sample(*extra: str, query: str = q, prior_: str = prior, fast: bool = True) -> list[str]:
        return [
            "sample",
            query,
            "--subject",
            "builtin:mnist-cnn",
            "--prior",
            prior_,
            "--out",
            str(out / "s"),
            *(FAST if fast else ["-q", "--device", "cpu"]),
            *extra,
        ]

    c: list[tuple[str, list[str]]] = []
    flags = {
        "device-cuda": ["--device", "cuda"],
        "device-cuda-7": ["--device", "cuda:7"],
        "device-nonsense": ["--device", "gpu0"],
        "device-meta": ["--device", "meta"],
        "n-0": ["--n", "0"],
        "n-neg": ["--n", "-3"],
        "n-1e7": ["--n", "10000000"],
        "steps-0": ["--steps", "0"],
        "steps-neg": ["--steps", "-2"],
        "steps-1e9": ["--steps", "1000000000"],
        "inner-steps-neg": ["--inner-steps", "-1"],
        "inner-steps-1e9": ["--inner-steps", "1000000000"],
        "gamma-1e308": ["--gamma", "1e308"],
        "gamma-nan": ["--gamma", "nan"],
        "gamma-inf": ["--gamma", "inf"],
        "gamma-neg": ["--gamma", "-1"],
        "gamma-bad-anchor": ["--gamma", "[[1,2]]"],
        "gamma-string-json": ["--gamma", '"abc"'],
        "gamma-object": ["--gamma", "{}"],
        "gamma-true": ["--gamma", "true"],
        "gamma-null": ["--gamma", "null"],
        "gamma-nested": ["--gamma", "[[[1]]]"],
        "lr-0": ["--lr", "0"],
        "lr-nan": ["--lr", "nan"],
        "lr-inf": ["--lr", "inf"],
        "lr-1e308": ["--lr", "1e308"],
        "eta-2": ["--eta", "2"],
        "eta-nan": ["--eta", "nan"],
        "loss-nonsense": ["--loss", "nonsense"],
        "method-nonsense": ["--method", "nonsense"],
        "method-unguided-inner": ["--method", "unguided"],
        "method-dps": ["--method", "dps"],
        "method-tfg-lr": ["--method", "tfg"],
        "batch-size-0": ["--batch-size", "0"],
        "batch-size-neg": ["--batch-size", "-4"],
        "seed-neg": ["--seed", "-1"],
        "seed-huge": ["--seed", str(2**70)],
        "layer-nonsense": ["--layer", "no_such_layer"],
        "dtype-fp16": ["--dtype", "fp16"],
    }
    for k, v in flags.items():
        c.append((f"sample-{k}", sample(*v)))
    c.append(("sample-subject-unknown", [*sample(), "--subject", "builtin:nope"]))
    c.append(("sample-subject-timm-missing", [*sample(), "--subject", "timm:nope_net"]))
    c.append(("sample-subject-nonsense", [*sample(), "--subject", "nonsense"]))
    c.append(("sample-subject-empty", [*sample(), "--subject", ""]))
    c.append(("sample-prior-nonsense", sample(prior_="nonsense")))
    c.append(("sample-prior-uncached", sample(prior_="org/uncached")))
    c.append(("sample-prior-a-file", sample(prior_=q)))
    c.append(("sample-prior-builtin-unknown", sample(prior_="builtin:nope")))
    c.append(("sample-prior-builtin-subject", sample(prior_="builtin:mnist-cnn")))
    for k, d in p["priors"].items():
        c.append((f"sample-prior-{k}", sample(prior_=str(d))))
    for k, f in p["files"].items():
        c.append((f"sample-query-{k}", sample(query=str(f))))
    c.append(("sample-out-under-file", [*sample(), "--out", f"{q}/x"]))
    c.append(("sample-out-dev-null", [*sample(), "--out", "/dev/null"]))
    c.append(("sample-query-escape", sample(query=str(root / "\x1b[31mred\x1b[0m.png"))))

    # config files
    cfgs = root / "cfg"
    cfgs.mkdir(exist_ok=True)
    for name, text in {
        "steps-true.yaml": "steps: true\n",
        "n-float.yaml": "n: 1.5\n",
        "seed-list.yaml": "seed: [1]\n",
        "gamma-map.yaml": "gamma: {a: 1}\n",
        "device-int.yaml": "device: 3\n",
    }.items():
        (cfgs / name).write_text(text)
        c.append((f"sample-config-{name}", [*sample(), "--config", str(cfgs / name)]))

    # manifests
    man = root / "manifests"
    man.mkdir(exist_ok=True)
    good = a.unit(0, method=dict(FAST_METHOD), n=1)
    variants: dict[str, Any] = {
        "n-1e7": {**good, "n": 10**7},
        "steps-true": {**good, "method": {**FAST_METHOD, "steps": True}},
        "steps-1e9": {**good, "method": {**FAST_METHOD, "steps": 10**9}},
        "gamma-1e308": {**good, "method": {**FAST_METHOD, "gamma": 1e308}},
        "unguided-unknown": {**good, "method": {"name": "unguided", "steps": 2, "inner_steps": 3, "bogus": 1}},
        "method-steps-string": {**good, "method": {**FAST_METHOD, "steps": "2"}},
        "escape-query": {**good, "query": "\x1b]0;pwned\x07\x1b[2J.png"},
        "escape-subject": {**good, "subject": "builtin:\x1b[31mevil"},
        "layer-weird": {**good, "layer": {"penultimate": 1e308}},
    }
    for k, u in variants.items():
        f = man / f"{k}.jsonl"
        f.write_text(json.dumps(u) + "\n")
        c.append((f"audit-manifest-{k}", ["audit", str(f), "--out", str(out / f"a-{k}"), "-q", "--device", "cpu"]))
    dup = man / "dup.jsonl"
    dup.write_text(json.dumps(good)[:-1] + ', "n": 2}\n')
    c.append(
        ("audit-manifest-duplicate-key", ["audit", str(dup), "--out", str(out / "a-dup"), "-q", "--device", "cpu"])
    )
    csvf = man / "multi.csv"
    csvf.write_text(f'query,subject,prior,n\n"{q}",builtin:mnist-cnn,"{prior}\nsecond",1\n')
    c.append(
        ("audit-manifest-multiline-csv", ["audit", str(csvf), "--out", str(out / "a-csv"), "-q", "--device", "cpu"])
    )
    goodf = man / "good.jsonl"
    goodf.write_text(json.dumps(good) + "\n")
    for k, v in {
        "batch-size-0": ["--batch-size", "0"],
        "threads-neg": ["--threads", "-1"],
        "threads-0": ["--threads", "0"],
        "cache-size-0": ["--cache-size", "0"],
        "workers-0": ["--workers", "0"],
        "num-shards-0": ["--num-shards", "0"],
        "shard-index-out": ["--num-shards", "2", "--shard-index", "5"],
        "device-cuda": ["--device", "cuda"],
    }.items():
        c.append((f"audit-{k}", ["audit", str(goodf), "--out", str(out / f"b-{k}"), "-q", "--device", "cpu", *v]))
    c.append(("audit-manifest-fifo", ["audit", str(p["files"]["fifo"]), "--out", str(out / "fifo"), "-q"]))
    c.append(("audit-manifest-dev-zero", ["audit", "/dev/zero", "--out", str(out / "zero"), "-q"]))

    # zoo, layers, report, data, demo
    c += [
        ("zoo-card-unknown", ["zoo", "card", "nope"]),
        ("zoo-evaluate-unknown", ["zoo", "evaluate", "nope", "--n", "2"]),
        ("zoo-show-unknown", ["zoo", "show", "nope"]),
        ("zoo-train-unknown", ["zoo", "train", "nope"]),
        ("zoo-export-unknown", ["zoo", "export", "nope"]),
        ("zoo-evaluate-n-0", ["zoo", "evaluate", "mnist-cnn", "--n", "0", "--no-write"]),
        ("zoo-evaluate-n-neg", ["zoo", "evaluate", "mnist-ddpm", "--n", "-1", "--no-write"]),
        (
            "zoo-train-threads-neg",
            ["zoo", "train", "mnist-cnn", "--threads", "-1", "--steps", "1", "--workdir", str(out / "zt")],
        ),
        ("layers-unknown", ["layers", "builtin:nope"]),
        ("layers-nonsense", ["layers", "nonsense"]),
        ("layers-timm-missing", ["layers", "timm:nope_net"]),
        ("report-missing", ["report", str(root / "nope")]),
        ("report-a-file", ["report", q]),
        ("data-unknown", ["data", "fetch", "nope"]),
        ("demo-device-cuda", ["demo", "--device", "cuda", "--quick", "--out", str(out / "demo")]),
        ("trained-sample-unknown", ["trained", "sample", "nope", "--query", q, "--out", str(out / "bl")]),
        ("trained-show-unknown", ["trained", "show", "nope"]),
        ("trained-train-unknown", ["trained", "train", "nope"]),
        ("bench-priors-unknown", ["bench", "--priors", "builtin:nope", "--out", str(out / "bench"), "--dry-run"]),
    ]
    return c


def run_case(argv: list[str], timeout: int) -> dict[str, Any]:
    from fiberscope.cli import main

    err = io.StringIO()
    t0 = time.perf_counter()

    def alarm(signum: int, frame: Any) -> None:
        raise Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    outcome = "exit"
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code: Any = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    except Timeout:
        code, outcome = None, "timeout"
    except BaseException as e:
        code, outcome = None, f"escaped {type(e).__name__}: {str(e)[:200]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()] or text.splitlines()[-1:]
    controls = any((ord(ch) < 32 and ch not in "\n\t") or ch == "\x7f" for ch in text)
    return {
        "argv": [str(x) for x in argv],
        "code": code,
        "outcome": outcome,
        "message": lines[0] if lines else "",
        "raw_control_chars": controls,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="run only the cases whose name starts with this")
    ap.add_argument("--timeout", type=int, default=90, help="seconds per case (default 90)")
    ap.add_argument("--memory-gb", type=float, default=7.0, help="address-space limit (default 7 GB)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "bad_inputs.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    lim = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        os.environ["FIBERSCOPE_ZOO_DIR"] = str(root / "assets" / "zoo")
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["FIBERSCOPE_TRAINED_DIR"] = str(root / "trained")
        p = build(root)
        results: dict[str, Any] = {}
        for name, argv in cases(p):
            if args.only and not name.startswith(args.only):
                continue
            r = run_case(argv, args.timeout)
            results[name] = r
            code = r["code"] if r["outcome"] == "exit" else r["outcome"][:20]
            msg = r["message"].encode("unicode_escape").decode()[:150]
            print(f"{name:<44} {code!s:>5}  {msg}", flush=True)
    counts = Counter(str(r["code"]) if r["outcome"] == "exit" else r["outcome"].split(":")[0] for r in results.values())
    internal = sorted(k for k, r in results.items() if r["code"] == 1 or r["outcome"] != "exit")
    raw = sorted(k for k, r in results.items() if r["raw_control_chars"])
    print(f"\n{len(results)} cases; exit codes: {dict(sorted(counts.items()))}")
    print(f"internal error / escaped / timeout: {len(internal)}: {', '.join(internal)}")
    print(f"raw control characters on stderr: {len(raw)}: {', '.join(raw)}")
    Path(args.json).write_text(
        json.dumps({"cases": results, "counts": counts, "internal": internal, "raw_control": raw}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One validation layer and one error taxonomy: each case of issue 20 items 5–10, reproduced, then fixed.

The same typed, bounded parameters (fiberscope.validation) are checked for the API, manifests and
CLI flags before any model loads; every error maps to one exit code (fiberscope.errors).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fiberscope as fs
from conftest import TinyCNN
from fiberscope.audit.manifest import parse_manifest
from fiberscope.data.query import QueryError, load_query
from fiberscope.errors import (
    EXIT,
    GuidanceError,
    InputError,
    ManifestError,
    ModelNotAvailableError,
    OutputWriteError,
    ParameterError,
    PickleRefusedError,
    SubjectGradientError,
    WeightsError,
    classify,
    exit_code_for,
    printable,
)
from fiberscope.methods import method_from_spec
from fiberscope.validation import MAX_GAMMA, MAX_N, MAX_STEPS, check, check_device, check_seeds, loads_json

# ---------------------------------------------------------------------------------------------------------------
# the taxonomy


def test_every_error_class_has_its_exit_code_and_old_import_paths_still_work() -> None:
    import fiberscope.audit.manifest as manifest
    import fiberscope.cli as cli
    import fiberscope.data.query as query
    import fiberscope.guidance.base as gbase
    import fiberscope.priors.loading as loading
    import fiberscope.subjects.base as sbase

    assert query.QueryError is fs.errors.QueryError and manifest.ManifestError is ManifestError
    with pytest.warns(DeprecationWarning, match="fiberscope.errors"):  # moved: still there until 0.2, with a warning
        assert loading.ModelNotAvailableError is ModelNotAvailableError
    with pytest.warns(DeprecationWarning, match="fiberscope.errors"):
        assert loading.PickleRefusedError is PickleRefusedError
    assert gbase.GuidanceError is GuidanceError and sbase.SubjectGradientError is SubjectGradientError
    assert cli.EXIT is EXIT and cli.CLIError is fs.errors.CLIError
    cases = {
        ParameterError("x"): 2,
        QueryError("x"): 3,
        ManifestError("x"): 3,
        GuidanceError("x"): 4,
        SubjectGradientError("x"): 4,
        OutputWriteError(28, "No space left on device"): 6,
        ModelNotAvailableError("x"): 7,
        WeightsError("x"): 8,
        PickleRefusedError("x"): 8,
        KeyboardInterrupt(): 130,
        RuntimeError("a bug"): 1,
        TypeError("a bug"): 1,
    }
    assert {type(e).__name__: exit_code_for(e) for e in cases} == {type(e).__name__: c for e, c in cases.items()}
    # the classes keep the builtin bases callers catch
    assert isinstance(QueryError("x"), ValueError) and isinstance(GuidanceError("x"), FloatingPointError)
    assert isinstance(OutputWriteError(28, "x"), OSError) and isinstance(SubjectGradientError("x"), ValueError)
    from fiberscope.errors import NotTrainedError

    assert isinstance(NotTrainedError("x"), FileNotFoundError) and exit_code_for(NotTrainedError()) == 7


def test_foreign_errors_we_can_name_are_not_internal() -> None:
    from safetensors import SafetensorError

    assert classify(SafetensorError("Error while deserializing header: HeaderTooLarge"))[0] == EXIT["weights"]
    assert classify(RuntimeError("Error(s) in loading state_dict for Net: size mismatch"))[0] == EXIT["weights"]
    code, msg = classify(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried 4 TB"))
    assert code == EXIT["usage"] and "--batch-size" in msg
    assert classify(MemoryError())[0] == EXIT["usage"]
    assert classify(OSError(28, "No space left on device", "/out/x"))[0] == EXIT["output"]
    assert classify(FileNotFoundError(2, "No such file", "x"))[0] == EXIT["input"]


def test_printable_escapes_terminal_controls_only() -> None:
    assert printable("plain ünïcode γ\ttab") == "plain ünïcode γ\ttab"
    evil = "a\x1b]0;pwned\x07b\x1b[2Jc\u202ed\x9b"
    out = printable(evil)
    assert not any((ord(ch) < 32 and ch != "\t") or 0x7F <= ord(ch) <= 0x9F or ch == "\u202e" for ch in out)
    assert out == "a\\x1b]0;pwned\\x07b\\x1b[2Jc\\u202ed\\x9b"


# ---------------------------------------------------------------------------------------------------------------
# item 8: typed, bounded parameters (a bool is not an int; bounds are documented maxima)


@pytest.mark.parametrize(
    "name, value",
    [
        ("n", True),
        ("n", 1.5),
        ("n", "3"),
        ("n", 0),
        ("n", 10**7),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", 2**64),
        ("steps", True),
        ("steps", 10**9),
        ("lr", float("nan")),
        ("lr", True),
        ("eta", 1.5),
        ("batch_size", 0),
        ("threads", -1),
    ],
)
def test_bad_parameter_values_are_refused_with_their_name_and_bounds(name: str, value: object) -> None:
    with pytest.raises(ParameterError, match=rf"^{name} must be .*, got "):
        check(name, value)


def test_good_values_pass_and_text_sources_convert() -> None:
    assert check("n", 8) == 8 and check("n", np.int64(3)) == 3 and check("seed", 2**64 - 1) == 2**64 - 1
    assert check("n", "12", text=True) == 12 and check("n", 4.0, text=True) == 4
    with pytest.raises(ParameterError):
        check("n", 4.0)  # integral floats only from text sources (CSV cells, config files)
    assert check("batch_size", None) is None and check("lr", 1) == 1.0
    assert check("per_timestep_target", True) is True
    with pytest.raises(ParameterError):
        check("per_timestep_target", 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=True), "NDTM.steps must be an integer"),
        (dict(steps=10**9), rf"NDTM.steps must be an integer in \[1, {MAX_STEPS}\]"),
        (dict(inner_steps=False), "NDTM.inner_steps"),
        (dict(gamma=1e308), rf"NDTM.gamma must be a finite number in \[0, {MAX_GAMMA:g}\]"),
        (dict(gamma=True), "NDTM.gamma must be a number"),
        (dict(gamma=[(1e308, 0, 1000, 0)]), "NDTM.gamma anchor"),
        (dict(lr=True), "NDTM.lr"),
        (dict(eta=float("inf")), "NDTM.eta"),
        (dict(per_timestep_target="yes"), "NDTM.per_timestep_target must be true or false"),
    ],
)
def test_method_settings_go_through_the_same_layer(kwargs: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        fs.NDTM(**kwargs)


def test_every_method_refuses_bools_unbounded_values_and_unknown_settings() -> None:
    from fiberscope.guidance import METHODS

    for name, cls in METHODS.items():
        steps_field = "iterations" if name == "pixel_opt" else "steps"
        with pytest.raises(ParameterError, match=steps_field):
            cls(**{steps_field: True})
        with pytest.raises(ParameterError, match=steps_field):
            cls(**{steps_field: 10**9})
        with pytest.raises(ParameterError, match=rf"method '{name}': unknown setting\(s\) \['bogus'\]; valid: \["):
            method_from_spec({"name": name, "bogus": 1})
    # unguided used to drop unknown settings silently
    with pytest.raises(ParameterError, match=r"unknown setting\(s\) \['inner_steps'\]"):
        method_from_spec("unguided", {"inner_steps": 3, "steps": 2})
    assert method_from_spec({"name": "unguided", "steps": 2}).steps == 2
    with pytest.raises(ParameterError, match=r"'paper-colormnist': unknown setting\(s\) \['inner_step'\]"):
        method_from_spec("paper-colormnist", {"inner_step": 3})


def test_sample_fiber_checks_its_arguments_before_loading_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    monkeypatch.setattr("fiberscope.api.load_prior", lambda *a, **k: loads.append(a))
    q = torch.zeros(1, 1, 8, 8)
    m = fs.Unguided(steps=1)
    bad = [
        (dict(seed=1.5), "seed must be an integer"),
        (dict(seed=-1), r"seed must be an integer in \[0, "),
        (dict(n=True), "n must be an integer"),
        (dict(n=MAX_N + 1), r"n must be an integer in \[1, 100000\]"),
        (dict(seeds=[-1]), r"seeds\[0\] must be an integer in \[0, "),
        (dict(seeds="12"), "seeds must be a list of integers, got '12'"),
        (dict(seeds=12), "seeds must be a list of integers"),
        (dict(seeds=[1, True]), r"seeds\[1\] must be an integer"),
        (dict(seeds=[]), "seeds is empty"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(dtype=torch.int64), "dtype must be a floating-point dtype"),
        (dict(dtype="int8"), "dtype must be a floating-point dtype"),
        (dict(device="gpu0"), "is not a device name"),
    ]
    for kw, match in bad:
        with pytest.raises(ParameterError, match=match):
            fs.sample_fiber(TinyCNN(), q, "builtin:mnist-ddpm", method=m, progress=False, **kw)
    assert loads == []  # nothing was loaded for any of them


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_a_gpu_that_is_not_there_is_a_usage_error() -> None:
    for dev in ("cuda", "cuda:3", torch.device("cuda")):
        with pytest.raises(ParameterError, match="no CUDA GPU is visible"):
            check_device(dev)
    assert check_device("cpu") == "cpu" and check_device(None) is None


def test_strict_json_refuses_repeated_keys_and_nan() -> None:
    with pytest.raises(ValueError, match="duplicate key 'n'"):
        loads_json('{"n": 2, "n": 2000}')
    with pytest.raises(ValueError, match="NaN is not valid JSON"):
        loads_json('{"lr": NaN}')
    assert loads_json('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}


# ---------------------------------------------------------------------------------------------------------------
# item 7: dtype with a prior object


def test_dtype_is_applied_to_a_prior_object_and_integer_dtypes_are_refused(tiny_prior) -> None:
    p = fs.load_prior(tiny_prior, dtype=torch.float16)
    assert p is tiny_prior and p.compute_dtype == torch.float16
    assert {t.dtype for t in p.model.parameters()} == {torch.float16}
    assert fs.load_prior(tiny_prior, dtype="bf16").compute_dtype == torch.bfloat16
    for bad in (torch.int64, torch.bool, torch.complex64, "int32"):
        with pytest.raises(ParameterError, match="floating-point dtype"):
            fs.load_prior(tiny_prior, dtype=bad)
    gauss = fs.GaussianPrior(shape=(1, 8, 8))
    assert fs.load_prior(gauss, dtype=torch.float32) is gauss  # already float32: nothing to do
    with pytest.raises(ParameterError, match="cannot be applied to this GaussianPrior"):
        fs.load_prior(gauss, dtype=torch.float16)
    out = fs.sample_fiber(
        TinyCNN(), torch.zeros(1, 1, 8, 8), tiny_prior, n=1, method=fs.Unguided(steps=1), progress=False, dtype="fp32"
    )
    assert out.config["dtype"] == "torch.float32" and tiny_prior.compute_dtype == torch.float32


def test_seeds_are_checked_and_reproduce(tiny_prior) -> None:
    assert check_seeds(np.array([3, 4])) == [3, 4]
    kw = dict(method=fs.Unguided(steps=2), progress=False)
    a = fs.sample_fiber(TinyCNN(), torch.zeros(1, 1, 8, 8), tiny_prior, n=2, seed=5, **kw)
    b = fs.sample_fiber(TinyCNN(), torch.zeros(1, 1, 8, 8), tiny_prior, seeds=a.seeds[1:], **kw)
    assert torch.allclose(a.images[1:], b.images, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# item 8: manifests


def test_manifest_duplicate_keys_unknown_settings_and_bools_are_line_errors() -> None:
    base = {"query": "q.png", "subject": "builtin:mnist-cnn", "prior": "builtin:mnist-ddpm"}
    lines = [
        json.dumps(base)[:-1] + ', "n": 2, "n": 2000}',
        json.dumps({**base, "n": 10**7}),
        json.dumps({**base, "n": True}),
        json.dumps({**base, "method": {"name": "ndtm", "steps": True}}),
        json.dumps({**base, "method": {"name": "ndtm", "steps": 10**9}}),
        json.dumps({**base, "method": {"name": "ndtm", "gamma": 1e308}}),
        json.dumps({**base, "method": {"name": "unguided", "inner_steps": 3}}),
        json.dumps({**base, "method": {"name": "ndtm", "steps": 3}})[:-2] + ', "steps": 4}}',
        json.dumps({**base, "query": "a\x1b[2Jb.png"}),
        json.dumps({**base, "layer": {"penultimate": 1e308}}),
        json.dumps({**base, "seed": 7}),
    ]
    m = parse_manifest("\n".join(lines), "jsonl")
    msgs = {e.line: e.message for e in m.errors}
    assert [u.line for u in m.units] == [11] and m.units[0].seed == 7
    assert "duplicate key 'n'" in msgs[1]
    assert "'n' must be an integer in [1, 100000]" in msgs[2] and "got True" in msgs[3]
    assert "NDTM.steps must be an integer" in msgs[4] and "got 1000000000" in msgs[5]
    assert "NDTM.gamma must be a finite number in [0, 10000]" in msgs[6]
    assert "unknown setting(s) ['inner_steps']" in msgs[7]
    assert "duplicate key 'steps'" in msgs[8]
    assert "control character" in msgs[9] and "weights in [0, 1e+06]" in msgs[10]


def test_csv_quoted_multiline_cell_is_one_unit_and_line_numbers_stay_right() -> None:
    text = (
        "query,subject,prior,label,n\n"
        'a.png,builtin:mnist-cnn,builtin:mnist-ddpm,"two\nlines",1\n'
        "# a comment\n"
        "b.png,builtin:mnist-cnn,builtin:mnist-ddpm,plain,2\n"
        'c.png,builtin:mnist-cnn,"builtin:mnist\nddpm",x,3\n'
        "d.png,builtin:mnist-cnn,builtin:mnist-ddpm,,true\n"
    )
    m = parse_manifest(text, "csv")
    assert [(u.query, u.line, u.label, u.n) for u in m.units] == [
        ("a.png", 2, "two\nlines", 1),
        ("b.png", 5, "plain", 2),
    ]
    assert {e.line: e.message for e in m.errors}.keys() == {6, 8}
    assert "control character" in m.errors[0].message and "'n' must be an integer" in m.errors[1].message
    with pytest.raises(ManifestError, match="each once"):
        parse_manifest("query,subject,prior,prior\n", "csv")


def test_an_unbalanced_quote_is_named() -> None:
    text = 'query,subject,prior\n"a.png,builtin:mnist-cnn,builtin:mnist-ddpm\nb.png,s,p\n'
    m = parse_manifest(text, "csv")
    assert not m.units and "quoted cell runs from line 2 to line 3" in m.errors[0].message


# ---------------------------------------------------------------------------------------------------------------
# item 8: a scheduler config that says something we do not know


def test_scheduler_config_values_are_checked(unet_dir: Path) -> None:
    from fiberscope.priors.diffusers import schedule_from_scheduler_config

    cfg_file = unet_dir / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    for change, match in [
        ({"prediction_type": "nonsense"}, "prediction_type 'nonsense' is not one of"),
        ({"num_train_timesteps": 0}, r"num_train_timesteps must be an integer in \[2, "),
        ({"beta_schedule": "zzz"}, "its schedule cannot be built"),
    ]:
        with pytest.raises(WeightsError, match=match):
            schedule_from_scheduler_config({**cfg, **change})
        cfg_file.write_text(json.dumps({**cfg, **change}))
        with pytest.raises(WeightsError, match=rf"scheduler_config\.json: {match}"):
            fs.load_prior(unet_dir)
    for text, match in [("[1]", "must hold a JSON object, got list"), ("{", "is not valid JSON")]:
        cfg_file.write_text(text)
        with pytest.raises(WeightsError, match=match):
            fs.load_prior(unet_dir)
    cfg_file.write_text(json.dumps({**cfg, "prediction_type": "v_prediction"}))
    assert fs.load_prior(unet_dir).parameterization == "v"


# ---------------------------------------------------------------------------------------------------------------
# item 9: bad weights and configs are named, never "internal"


def _edit_json(p: Path, **kv: object) -> None:
    p.write_text(json.dumps({**json.loads(p.read_text()), **kv}))


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "wrong-shape", "missing-tensor"])
def test_damaged_safetensors_are_bad_weights(unet_dir: Path, damage: str) -> None:
    from safetensors.torch import load_file, save_file

    w = unet_dir / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "zero-byte":
        w.write_bytes(b"")
    elif damage == "truncated":
        w.write_bytes(w.read_bytes()[:4000])
    else:
        sd = load_file(str(w))
        k = next(iter(sd))
        if damage == "wrong-shape":
            sd[k] = sd[k].new_zeros(tuple(s + 1 for s in sd[k].shape))
        else:
            del sd[k]  # diffusers would initialise it at random and say nothing but a warning
        save_file(sd, str(w))
    with pytest.raises(WeightsError, match=r"the weights in .*unet (cannot be loaded|lack 1 tensor)") as info:
        fs.load_prior(unet_dir)
    assert exit_code_for(info.value) == EXIT["weights"] and str(unet_dir) in str(info.value)


@pytest.mark.parametrize("size", [0, -5, 10**6, "big", [8]])
def test_sample_size_out_of_bounds_is_refused_before_the_model_is_built(unet_dir: Path, size: object) -> None:
    _edit_json(unet_dir / "unet" / "config.json", sample_size=size)
    with pytest.raises(WeightsError, match=r"unet/config\.json: sample_size must be an integer .* in \[1, 8192\]"):
        fs.load_prior(unet_dir)


def test_a_broken_config_json_is_named(unet_dir: Path) -> None:
    (unet_dir / "unet" / "config.json").write_text("{oops")
    with pytest.raises(WeightsError, match=r"unet/config\.json is not valid JSON \(.* at line 1 column 2\)"):
        fs.load_prior(unet_dir)
    (unet_dir / "unet" / "config.json").write_text("3")
    with pytest.raises(WeightsError, match=r"unet/config\.json must hold a JSON object, got int"):
        fs.load_prior(unet_dir)
    (unet_dir / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(WeightsError, match=r"has unet/ but no scheduler/scheduler_config\.json"):
        fs.load_prior(unet_dir)


# ---------------------------------------------------------------------------------------------------------------
# item 9: a subject that fails for another reason than a shape mismatch


def test_only_a_shape_mismatch_is_reported_as_one(tiny_prior) -> None:
    from fiberscope.errors import SubjectError

    kw = dict(n=1, method=fs.Unguided(steps=1), progress=False)
    with pytest.raises(SubjectError, match=r"cannot take the prior's images \(shape \(1, 8, 8\)\)"):
        fs.sample_fiber(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 1, 8, 8), tiny_prior, **kw)

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA driver hiccup in my own code")

    def index_bug(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, [1, 2, 999]]

    for fn, what in [(broken, "RuntimeError: CUDA driver hiccup"), (index_bug, "IndexError")]:
        with pytest.raises(SubjectError, match=rf"failed on the query \({what}") as info:
            fs.sample_fiber(fn, torch.zeros(1, 1, 8, 8), tiny_prior, **kw)
        assert "cannot take the prior's images" not in str(info.value)
        assert exit_code_for(info.value) == EXIT["input"]


# ---------------------------------------------------------------------------------------------------------------
# items 5, 6, 9: query files


def _png_strip(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\0" + b"\0" * width for _ in range(height))
    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def test_an_aspect_ratio_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    strip = tmp_path / "strip.png"
    strip.write_bytes(_png_strip(1, 2_000_000))  # a few kB for 2 Mpixels: resized to 28 × 28 it took 6.3 GB
    assert strip.stat().st_size < 10_000
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    with pytest.raises(QueryError, match=r"strip\.png is 1 × 2000000 pixels; .* at most 32768 pixels a side"):
        load_query(strip, image_shape=(1, 28, 28), data_range=(-1, 1))
    assert decoded == []  # refused from the header
    np.save(tmp_path / "tall.npy", np.zeros((40000, 2), np.uint8))
    with pytest.raises(QueryError, match=r"tall\.npy holds an array of shape \(40000, 2\)"):
        load_query(tmp_path / "tall.npy", image_shape=(1, 28, 28), data_range=(-1, 1))


def test_resizing_never_allocates_more_than_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.functional as F

    seen: list[tuple[int, ...]] = []
    real = F.interpolate

    def spy(t: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        seen.append(tuple(t.shape))
        out = real(t, *a, **k)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(F, "interpolate", spy)
    q = load_query(np.full((1, 30000), 255, np.uint8), image_shape=(1, 28, 28), data_range=(-1, 1))
    assert q.shape == (1, 1, 28, 28) and float(q.min()) == 1.0
    assert max(int(np.prod(s)) for s in seen) <= 28 * 28  # cropped to the aspect ratio first: 1 × 1 → 28 × 28
    seen.clear()
    grad = np.tile(np.arange(60, dtype=np.uint8), (40, 1))  # 40 × 60: the centre 40 × 40 is kept
    q = load_query(grad, image_shape=(1, 20, 20), data_range=(0, 1))
    assert seen[0] == (1, 1, 40, 40) and 9.5 / 255 < float(q.min()) < 11 / 255 and float(q.max()) < 50.5 / 255


def _tiff(tmp_path: Path, name: str, arr: np.ndarray, mode: str | None = None) -> Path:
    p = tmp_path / name
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(p)
    return p


def test_float_and_wide_integer_images_follow_the_documented_rules(tmp_path: Path) -> None:
    kw = dict(image_shape=(1, 4, 4), data_range=(0.0, 1.0))
    ramp = (np.arange(16, dtype=np.float32).reshape(4, 4) / 15).astype(np.float32)
    # mode F in [0, 1]: taken as it is (was converted to RGB: values 0 or 1/255, i.e. black)
    q = load_query(_tiff(tmp_path, "f01.tif", ramp, "F"), **kw)
    assert torch.allclose(q[0, 0], torch.from_numpy(ramp), atol=1e-6)
    # mode F in [0, 255]: divided by 255
    q = load_query(_tiff(tmp_path, "f255.tif", ramp * 255, "F"), **kw)
    assert torch.allclose(q[0, 0], torch.from_numpy(ramp), atol=1e-5)
    # mode F in any other range: refused, never stretched or clipped
    with pytest.raises(QueryError, match=r"fwide\.tif holds floats in \[-2e\+03, 2e\+03\]"):
        load_query(_tiff(tmp_path, "fwide.tif", ramp * 4000 - 2000, "F"), **kw)
    # 16-bit: by the bit depth (PNG I;16, TIFF I;16, uint16 arrays)
    v16 = (ramp * 65535).round().astype(np.uint16)
    for p in (_tiff(tmp_path, "v16.png", v16), _tiff(tmp_path, "v16.tif", v16)):
        assert torch.allclose(load_query(p, **kw)[0, 0], torch.from_numpy(ramp), atol=1e-4), p
    # mode I (32-bit TIFF): values ≤ 65535 read as 16-bit, ≤ 255 as 8-bit, larger values refused
    q = load_query(_tiff(tmp_path, "i16.tif", v16.astype(np.int32), "I"), **kw)
    assert torch.allclose(q[0, 0], torch.from_numpy(ramp), atol=1e-4)
    q = load_query(_tiff(tmp_path, "i8.tif", (ramp * 255).round().astype(np.int32), "I"), **kw)
    assert torch.allclose(q[0, 0], torch.from_numpy(ramp), atol=3e-3)
    with pytest.raises(QueryError, match=r"i32\.tif is int32 with values up to 2000000000, beyond 16 bits"):
        load_query(_tiff(tmp_path, "i32.tif", (ramp * 2e9).astype(np.int32), "I"), **kw)
    with pytest.raises(QueryError, match="negative values"):
        load_query(_tiff(tmp_path, "ineg.tif", (ramp * 100 - 50).astype(np.int32), "I"), **kw)
    # arrays: the same rules
    assert float(load_query(np.full((4, 4), 200, np.int64), **kw).max()) == pytest.approx(200 / 255)
    assert float(load_query(np.ones((4, 4), bool), **kw).min()) == 1.0
    with pytest.raises(QueryError, match="complex"):
        load_query(np.zeros((4, 4), np.complex64), **kw)


def test_channels_last_or_first_is_inferred_from_the_short_axis() -> None:
    kw = dict(image_shape=(1, 28, 28), data_range=(-1.0, 1.0))
    with pytest.raises(QueryError, match=r"has 5 channels and the prior wants 1; .*\(28, 28, 5\) read as height"):
        load_query(np.zeros((28, 28, 5), np.uint8), **kw)
    with pytest.raises(QueryError, match=r"has 5 channels .*\(5, 28, 28\) read as 5 channels × height"):
        load_query(np.zeros((5, 28, 28), np.uint8), **kw)
    rgb = np.zeros((3, 64, 2), np.uint8)  # 3 channels first, although the last axis is shorter
    assert load_query(rgb, image_shape=(3, 8, 8), data_range=(0.0, 1.0)).shape == (1, 3, 8, 8)
    assert load_query(np.zeros((28, 28, 3), np.uint8), **kw).shape == (1, 1, 28, 28)


def test_special_files_are_named_as_such(tmp_path: Path) -> None:
    import os

    kw = dict(image_shape=(1, 8, 8), data_range=(-1.0, 1.0))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(QueryError, match=r"pipe\.png is a FIFO \(named pipe\), not a regular file"):
        load_query(fifo, **kw)  # and it does not block: the FIFO is never opened
    with pytest.raises(QueryError, match="/dev/zero is a character device"):
        load_query("/dev/zero", **kw)
    with pytest.raises(QueryError, match=r"/proc/self/status is not an image \(UnidentifiedImageError"):
        load_query("/proc/self/status", **kw)  # 0 bytes by stat(), but it has content: not "empty"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(QueryError, match=r"empty\.png is empty \(0 bytes\)"):
        load_query(tmp_path / "empty.png", **kw)


def test_png_bytes_in_memory_are_still_checked() -> None:
    buf = io.BytesIO(_png_strip(40000, 1))
    with pytest.raises(QueryError, match="at most 32768 pixels a side"):
        load_query(Image.open(buf), image_shape=(1, 8, 8), data_range=(-1, 1))
    assert isinstance(QueryError("x"), InputError)


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from fiberscope.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out.split("exit codes:")[1]
    documented = {int(line.split()[0]) for line in text.splitlines() if line[:1].isdigit()}
    assert documented == set(EXIT.values())

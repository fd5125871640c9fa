"""benchmarks/scale.py on tiny versions of its architectures (issue 19 #3): rows, JSON, split, projection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale


def test_projection_arithmetic():
    # 200 steps of A = 2 s, 160 guided steps of 5 inner iterations of B = 3 s, batch 4
    assert scale.project(2.0, 3.0, 160, 4) == pytest.approx((200 * 2 + 160 * 5 * 3) / 4)
    assert scale.project(1.0, 0.0, 0, 1, steps=10) == 10.0
    sp = scale.split_of({"prior_forward": 1.0, "prior_backward": 2.0, "subject_forward": 0.5, "no_grad": 9}, 4.0)
    assert sp == {"prior_forward": 1.0, "prior_backward": 2.0, "decoder": 0.0, "subject": 0.5, "rest": 0.5}
    assert scale._known_peak("NVIDIA H200") == 989.0 and scale._known_peak("Some GPU") is None


@pytest.mark.parametrize(
    ("prior", "subject", "ckpt"),
    [("adm-256-uncond", "resnet50", True), ("ddpm-celebahq-256", "dinov2-vitb14", False), ("sd15", "resnet50", True)],
)
def test_measure_a_tiny_configuration(prior, subject, ckpt):
    cfg = dict(prior=prior, subject=subject, dtype="fp32", gradient_checkpointing=ckpt, batch_size=2, steps=2)
    cfg.update(inner_steps=2, device="cpu", tiny=True, peak_tflops=1.0)  # peak given: FLOPs counted on the CPU
    row = scale.measure(cfg)
    assert set(scale.ROW_KEYS) <= set(row)
    json.loads(json.dumps(row))
    assert row["steps_measured"] == 2 and row["batch_size"] == 2 and row["peak_memory_gb"] > 0
    assert set(row["split"]) == set(scale.SPLIT_KEYS)
    timed = sum(v for k, v in row["split"].items() if k != "rest")
    assert sum(row["split"].values()) == pytest.approx(row["s_per_step"])
    assert 0 < timed <= row["s_per_step"] * 1.01  # the hooks measured real calls, inside the step
    assert row["split"]["prior_forward"] > 0 and row["split"]["prior_backward"] > 0 and row["split"]["subject"] > 0
    assert (row["split"]["decoder"] > 0) == (prior == "sd15")
    assert row["paper_guided_steps"] == 160
    a, b = row["s_no_grad_per_step"], row["s_per_inner_step"]
    assert row["s_per_fiber_paper"] == pytest.approx(scale.project(a, b, 160, 2))
    assert a + 2 * b == pytest.approx(row["s_per_step"])
    assert row["flops_per_step"] > 0 and row["mfu"] is not None


def test_driver_writes_scale_json_and_reports_a_failed_configuration(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_child(cfg, timeout):
        calls.append(cfg)
        if cfg["gradient_checkpointing"]:
            return {**scale._empty(cfg), "error": "killed (out of memory?)"}
        row = scale._empty(cfg)
        row.update(peak_memory_gb=1.0, s_per_step=2.0, s_per_fiber_paper=3600.0, mfu=None)
        row["split"] = dict.fromkeys(scale.SPLIT_KEYS, 0.4)
        return row

    monkeypatch.setattr(scale, "run_child", fake_child)
    args = ["--out", str(tmp_path), "--priors", "adm-256-uncond", "sd3-medium", "--subjects", "resnet50"]
    assert scale.main([*args, "--dtypes", "fp32"]) == 0
    rows = json.loads((tmp_path / "scale.json").read_text())
    assert [(r["prior"], r["gradient_checkpointing"]) for r in rows] == [
        ("adm-256-uncond", False),
        ("adm-256-uncond", True),
    ]
    assert all(set(scale.ROW_KEYS) <= set(r) for r in rows)
    out = capsys.readouterr().out
    assert "skip sd3-medium on the CPU" in out and "failed: killed" in out and "1000.0" in out
    assert [c["inner_steps"] for c in calls] == [5, 5]
    calls.clear()
    assert scale.main(["--out", str(tmp_path), "--quick"]) == 0
    assert [(c["prior"], c["subject"]) for c in calls][:2] == [("adm-256-uncond", "resnet50")] * 2
    assert {c["inner_steps"] for c in calls} == {1} and {c["batch_size"] for c in calls} == {1}


def test_clip_subject_builds_through_the_open_clip_adapter():
    import torch

    phi = scale.build_subject("clip-vitb16")
    assert sum(p.numel() for p in phi.parameters()) > 80e6  # ViT-B/16's image tower
    with torch.no_grad():
        assert phi(torch.zeros(1, 3, 64, 64), (-1.0, 1.0)).shape == (1, 512)

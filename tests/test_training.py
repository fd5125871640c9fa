"""fiberscope.training: one loop and one checkpoint format for the zoo and the trained models.

What is checked here: a resumed run follows the uninterrupted one exactly, a bad configuration fails
before training, the dependencies point one way (the zoo and the trained models use ``training`` and
``models``, never the reverse, and the trained models no longer train through the zoo), and the old
import paths (``fiberscope.zoo.training``, ``fiberscope.zoo.models``) still work with a warning.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch

import fiberscope.models as models
import fiberscope.training as training
from fiberscope.training import Checkpoint, TrainConfig, run_training
from fiberscope.training.data import random_shift, split_labels, with_labels

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fiberscope"


def _regression(tmp: Path, cfg: TrainConfig, **kw):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    data = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))

    def loss(m, batch, g):
        noise = 0.01 * torch.randn(batch.shape[0], 1, generator=g)
        return ((m(batch[:, :3]) - batch[:, 3:] - noise) ** 2).mean()

    return run_training(tmp, net, loss, data, cfg, progress=False, log=lambda m: None, **kw)


def test_a_resumed_run_follows_the_uninterrupted_one(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=8, warmup=2, log_every=3, checkpoint_every=5, threads=1)
    whole, meta = _regression(tmp_path / "whole", cfg)
    _, stopped = _regression(tmp_path / "parts", cfg, max_minutes=0)  # stops after its first step
    assert stopped["step"] == 1 and Checkpoint(tmp_path / "parts").exists()
    parts, resumed = _regression(tmp_path / "parts", cfg)
    assert resumed["step"] == meta["step"] == 12
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), parts.state_dict().values()))
    state = json.loads((tmp_path / "parts" / "state.json").read_text())
    assert state["step"] == 12 and state["optimizer"]["param_groups"] and not list(tmp_path.rglob("*.pt"))
    assert training.loss_record(meta)["final_loss"] == meta["losses"][-1][1]


@pytest.mark.parametrize(
    ("change", "match"),
    [({"steps": 0}, "steps must be ≥ 1"), ({"batch_size": 64}, "larger than the training set")],
)
def test_a_bad_configuration_fails_before_training(tmp_path, change, match):
    cfg = TrainConfig(**{"steps": 3, "batch_size": 8, **change})
    with pytest.raises(ValueError, match=match):
        _regression(tmp_path, cfg)
    assert not Checkpoint(tmp_path).exists()


def test_labels_ride_along_and_augmentations_keep_shapes():
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    y = torch.tensor([0, 9, 3, 3, 1])
    xb, yb = split_labels(with_labels(x, y), (1, 28, 28))
    assert torch.equal(xb, x) and torch.equal(yb, y)
    g = torch.Generator().manual_seed(0)
    shifted = random_shift(x, g, 2)
    assert shifted.shape == x.shape and shifted.min() >= -1


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions, as absolute names."""
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    pkg = name.split(".")[:-1]  # the package a relative import starts from (for __init__ too)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_dependencies_point_from_the_zoo_and_the_trained_models_to_training_and_models():
    for pkg in ("training", "models"):
        for f in (PACKAGE / pkg).glob("*.py"):
            bad = {m for m in _imports(f) if m.startswith(("fiberscope.zoo", "fiberscope.trained"))}
            assert not bad, f"{f.name} imports {bad}"
    for f in (PACKAGE / "trained").glob("*.py"):
        bad = {m for m in _imports(f) if m.startswith(("fiberscope.zoo.training", "fiberscope.zoo.recipes"))}
        bad |= {m for m in _imports(f) if m.startswith(("fiberscope.zoo.models", "fiberscope.zoo.trainers"))}
        assert not bad, f"trained/{f.name} trains through the zoo: {bad}"
    for f in (PACKAGE / "zoo").glob("*.py"):
        assert not {m for m in _imports(f) if m.startswith("fiberscope.trained")}, f"zoo/{f.name}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("fiberscope.zoo.training", "fiberscope.training"),
        ("fiberscope.zoo.models", "fiberscope.models"),
    ],
)
def test_the_old_modules_warn_and_give_the_same_objects(old, new):
    module = importlib.import_module(old)
    home = importlib.import_module(new)
    names = {
        "fiberscope.training": ["Checkpoint", "TrainConfig", "batches", "diffusion_eps_loss", "ema_update",
                                "flow_velocity_loss", "hardware_string", "lr_at", "run_training", "save_safetensors"],
        "fiberscope.models": ["ColorblindEmbed", "ConvVAE", "GrayDecoder", "GrayEncoder", "LatentDenoiser",
                              "SmallCNN", "timestep_embedding"],
    }[new]  # fmt: skip
    for name in names:
        with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} has moved to {new}\.{name}"):
            assert getattr(module, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_from_import_of_an_old_path_warns_and_works():
    with pytest.warns(DeprecationWarning, match="fiberscope.training.TrainConfig"):
        from fiberscope.zoo.training import TrainConfig as Old
    with pytest.warns(DeprecationWarning, match="fiberscope.models.SmallCNN"):
        from fiberscope.zoo.models import SmallCNN as OldCNN
    assert Old is TrainConfig and OldCNN is models.SmallCNN


def test_moved_recipe_helpers_warn_and_the_recipe_api_does_not():
    import warnings

    from fiberscope.trained import conditional_training, featinv_training, recipes, svae_training

    old_recipes = importlib.import_module("fiberscope.baselines.recipes")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in recipes.__all__:
            assert getattr(recipes, name) is not None
        from fiberscope.zoo.recipes import PIXEL_WEIGHTS, RECIPES, UNET_28, export_checkpoint, train  # noqa: F401
    for name, home in [
        ("build_pairs", conditional_training),
        ("evaluate_conditional", conditional_training),
        ("evaluate_featinv", featinv_training),
        ("evaluate_svae", svae_training),
    ]:
        with pytest.warns(DeprecationWarning, match=f"{home.__name__}.{name}"):
            assert getattr(old_recipes, name) is getattr(home, name)
    assert UNET_28 is models.UNET_28

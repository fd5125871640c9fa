"""Which work units this process runs: ``--num-shards/--shard-index``, or what the launcher says.

No process group and no cluster code: each process reads the whole manifest, keeps its own slice
and writes one directory per unit, so torchrun, ``accelerate launch``, SLURM job arrays and
Kubernetes indexed jobs all work the same way. The slice is a contiguous block of the units sorted
by (prior, subject, layer, unit key): processes load few distinct models, every unit belongs to
exactly one shard, and the split does not depend on the order of the manifest's lines.

Where the shard comes from, first match wins:

1. ``--num-shards N --shard-index I`` (both, explicitly);
2. ``WORLD_SIZE`` / ``RANK`` (torchrun, ``accelerate launch`` on several GPUs);
3. ``accelerate.PartialState()`` when accelerate is installed and reports several processes;
4. ``SLURM_ARRAY_TASK_COUNT`` / ``SLURM_ARRAY_TASK_ID`` (minus ``SLURM_ARRAY_TASK_MIN``): one array index per shard;
5. otherwise one shard.

Example:
    >>> from fiberscope.audit.sharding import resolve_shard, split_units
    >>> resolve_shard(env={"RANK": "1", "WORLD_SIZE": "4"})
    ShardInfo(index=1, count=4, source='torchrun (RANK/WORLD_SIZE)')
    >>> split_units(list(range(10)), 1, 4)
    [3, 4, 5]
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import errors
from .._deprecated import moved

__all__ = ["ShardInfo", "resolve_shard", "shard_units", "split_units"]

T = TypeVar("T")


@dataclass(frozen=True)
class ShardInfo:
    """This process's shard: ``index`` in ``[0, count)`` and where that came from."""

    index: int = 0
    count: int = 1
    source: str = "single process"


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise errors.ShardError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _checked(index: int, count: int, source: str, fix: str) -> ShardInfo:
    if count < 1 or not 0 <= index < count:
        raise errors.ShardError(f"shard index {index} is not in [0, {count}) (from {source}); {fix}")
    return ShardInfo(index, count, source)


def _from_accelerate() -> ShardInfo | None:
    if importlib.util.find_spec("accelerate") is None:
        return None
    try:
        from accelerate import PartialState

        state: Any = PartialState()
        n, i = int(state.num_processes), int(state.process_index)
    except Exception:  # a broken accelerate install must not stop a single-process audit
        return None
    return ShardInfo(i, n, "accelerate PartialState") if n > 1 else None


def resolve_shard(
    num_shards: int | None = None, shard_index: int | None = None, env: Mapping[str, str] | None = None
) -> ShardInfo:
    """This process's shard from explicit options, else from the launcher's environment.

    Args:
        num_shards: total number of shards (``--num-shards``).
        shard_index: this process's shard, 0-based (``--shard-index``).
        env: the environment to read (default ``os.environ``).

    Raises:
        ShardError: only one of the two options given, an index outside ``[0, num_shards)``, or
            launcher variables that do not describe a valid shard.
    """
    env = os.environ if env is None else env
    if (num_shards is None) != (shard_index is None):
        raise errors.ShardError(
            "give both --num-shards and --shard-index, or neither (then the launcher's variables are used)"
        )
    if num_shards is not None and shard_index is not None:
        return _checked(int(shard_index), int(num_shards), "--num-shards/--shard-index", "use 0 ≤ index < num-shards")
    if "WORLD_SIZE" in env and "RANK" in env:
        return _checked(
            _int_env(env, "RANK"),
            _int_env(env, "WORLD_SIZE"),
            "torchrun (RANK/WORLD_SIZE)",
            "check the launcher's RANK and WORLD_SIZE, or pass --num-shards/--shard-index",
        )
    acc = _from_accelerate()
    if acc is not None:
        return acc
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        lo = _int_env(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        return _checked(
            _int_env(env, "SLURM_ARRAY_TASK_ID") - lo,
            _int_env(env, "SLURM_ARRAY_TASK_COUNT"),
            "SLURM array (SLURM_ARRAY_TASK_ID/COUNT)",
            "submit a contiguous array such as --array=0-7 (no step), or pass --shard-index/--num-shards",
        )
    return ShardInfo()


def split_units(items: Sequence[T], index: int, count: int) -> list[T]:
    """Contiguous block ``index`` of ``count`` (the first ``len % count`` blocks get one extra item)."""
    q, r = divmod(len(items), count)
    start = index * q + min(index, r)
    return list(items[start : start + q + (1 if index < r else 0)])


def shard_units(units: Sequence[Any], shard: ShardInfo) -> list[Any]:
    """This shard's units: sorted by (prior, subject, layer, key), then :func:`split_units`."""
    ordered = sorted(units, key=lambda u: (*u.model_key, u.key))
    return split_units(ordered, shard.index, shard.count)


__getattr__ = moved(__name__, {"ShardError": "fiberscope.errors:ShardError"})

"""``fiberscope bench``: guidance methods side by side, measured the paper's way.

A matrix **methods × (prior, subject) pairs × queries × seeds**, from a YAML/TOML file or flags::

    fiberscope bench --config benchmarks/bench_default.yaml --out bench-out      # resumable
    fiberscope bench --config benchmarks/bench_default.yaml --out bench-out --methods ndtm,dps --seeds 0

For every (method, prior, subject) it reports, as ``mean ± std`` across sampling seeds with the
query set fixed (the paper's convention):

* the fiber loss (the headline ``metric``, default squared L2, and every other form in the JSON),
  beside the nearest-neighbour reference (the closest real test image in φ, query excluded);
* realism: the Fréchet distance between the samples and real test images in a *reference* model's
  space (never the subject: :func:`fiberscope.metrics.default_reference`), next to the same
  distance between two real sets of the same size (the floor set by sample size);
* diversity: mean pairwise distance among the samples of each fiber, in pixels and in the
  reference's features;
* label agreement of a reference classifier with the query's label and with its own prediction
  on the query;
* colour KL / W1 / dev against the true colour mixture (colour MNIST);
* cost: network calls per sample in forward-equivalents (a backward counts as two forwards) and
  wall time per sample.

Besides the guidance methods, two references that need no prior are judged the same way
(``references:``, default both): ``nn`` (the n nearest real images to the query in φ) and
``augment`` (n random augmentations of the query). Outputs in ``--out``: ``bench.md`` (one table
per pair), ``results.json``, ``loss_vs_cost.png``, ``loss_vs_realism.png``, and per unit
``units/PAIR/METHOD__seedS.{json,npz,png}``. A unit (one method, pair and seed over all queries)
is written atomically with a hash of its settings, which include a fingerprint of the prior's and
the subject's weight files (:func:`weights_fingerprint`); a rerun skips finished units whose
settings and weights did not change, so an interrupted bench resumes where it stopped and a
retrained model is measured again. Keys and hashes spell a trained model ``baseline:NAME``, its
name when they were first taken (:func:`fiberscope.loading.cache_spelling`), so a bench finished
before the rename resumes whichever spelling its file uses.

Sampling batches several queries together (each row its own target) through the one batch driver
that :func:`fiberscope.sample_fiber` uses (:func:`fiberscope.sampling.draw_rows`): sample ``j`` of
query ``q`` in seed ``s`` is, bit for bit, sample ``j`` of ``fs.sample_fiber(subject, query, prior, n,
method, seed=run_seed, batch_size=B)`` with the ``run_seeds`` and the batch shape ``B`` recorded in
the unit (on the same device; see the README's "What is reproducible"), and its network calls per
sample are counted the same way.

The package: :mod:`~fiberscope.bench.config` (the settings), :mod:`~fiberscope.bench.pair` (one pair's
models, data and samples), :mod:`~fiberscope.bench.run` (the units and the run),
:mod:`~fiberscope.bench.aggregate` (units → rows); the tables and plots are
:mod:`fiberscope.report.bench`; the command is ``fiberscope bench``.

Example (Python, with models named in ``objects`` instead of the zoo):
    >>> from fiberscope.bench import BenchConfig
    >>> cfg = BenchConfig.from_dict({"methods": {"ndtm": "builtin-mnist", "dps": {"name": "dps", "scale": 0.5}},
    ...                              "priors": ["builtin:mnist-ddpm"], "subjects": ["builtin:mnist-cnn@logits"],
    ...                              "queries": 4, "seeds": [0, 1], "n": 4})
    >>> [p.key for p in cfg.resolved_pairs()]
    ['mnist-ddpm__mnist-cnn@logits']
"""

from .._deprecated import moved
from ..report.bench import write_outputs
from .config import REFERENCES, SEED_STRIDE, BenchConfig, PairSpec, method_applies
from .pair import sample_queries, weights_fingerprint
from .run import run_bench, unit_path

__all__ = [
    "REFERENCES",
    "SEED_STRIDE",
    "BenchConfig",
    "PairSpec",
    "method_applies",
    "run_bench",
    "sample_queries",
    "unit_path",
    "weights_fingerprint",
    "write_outputs",
]

#: Moved in issue 22: the method registry is one function for the CLI, the bench and the audit; the tables
#: and plots are a report.
__getattr__ = moved(
    __name__,
    {
        "resolve_method": "fiberscope.methods:method_from_spec",
        "markdown": "fiberscope.report.bench:markdown",
        "plot": "fiberscope.report.bench:plot",
        "BASELINES": "fiberscope.bench.config:REFERENCES",  # "baseline" names only the training-free methods
    },
)

"""Evaluation protocols: one `Evaluator` per entry of config.evals.protocols.

`build(config, datasets, extractor)` makes one evaluator per protocol
(`config.evals.protocols = {name: {type, dataset, ...}}`, big_vision style;
default: one 'retrieval' protocol on the first dataset), looking each `type` up
in jreid.registry (kind 'evaluator'). `run_all` runs them all and names their
metrics `name/metric`, and also gives the primary protocol's metrics unprefixed,
so `results['mAP']` means what it always did.

A protocol's keys other than `type` and `dataset` override config.evals for
that protocol only (e.g. `{'type': 'retrieval', 'rerank': True}`).

The 'retrieval' protocol extracts query/gallery features and computes the
dataset's metrics (Market-style: same id + same camera removed, junk ignored).
Images are decoded at the first `run`, never at construction. By default they
are decoded once (and cached on disk by jreid.data.images) and kept in host
memory. With `config.data.in_memory=False` or `config.evals.stream=True`, they
are streamed from disk at every run, `block_size` (default 4096) images at a
time, so a large gallery never sits decoded in host memory; streaming does
not support `config.data.skip_corrupt` (it would have to decode everything to
know which rows to drop), which is an error at construction.

With `rerank`, k-reciprocal re-ranking (`rerank_k1`, `rerank_k2`,
`rerank_lambda`; default 20, 6, 0.3) replaces the plain distance.

Pictures: with `ranklist_images` or `tsne_images`, a retrieval `run` on
process 0 also keeps what `images()` needs to draw rank lists and a t-SNE,
without changing the metrics; jreid.evaluation.eval_images keeps and draws
them, and its `write_images(evaluators, writer, step)` (also importable
from here) hands them to TensorBoard.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jreid import registry
from jreid.data import pipeline
from jreid.data import records
from jreid.evaluation import distance
from jreid.evaluation import eval_images
from jreid.evaluation import retrieval

# train.py calls evaluator.write_images: the pictures' module owns it.
write_images = eval_images.write_images

# The protocols when config.evals.protocols is absent or empty: today's one.
DEFAULT_PROTOCOLS = {'retrieval': {'type': 'retrieval'}}


def summarize(metrics: dict[str, Any]) -> dict[str, float]:
  """{'cmc', 'mAP', 'mINP'} -> the fractions written to results.json."""
  cmc = np.asarray(metrics['cmc'])
  return {'mAP': float(metrics['mAP']), 'rank1': float(cmc[0]),
          'rank5': float(cmc[min(4, len(cmc) - 1)]),
          'rank10': float(cmc[min(9, len(cmc) - 1)]),
          'mINP': float(metrics['mINP'])}


def format(results: dict[str, float]) -> str:  # pylint: disable=redefined-builtin
  return ' '.join(f'{k} {100 * v:.1f}' for k, v in results.items()
                  if k in ('mAP', 'rank1', 'rank5', 'rank10', 'mINP'))


class Evaluator:
  """One evaluation protocol; registered under registry kind 'evaluator'."""

  name: str = ''

  @classmethod
  def from_config(cls, name: str, protocol: Mapping[str, Any], config,
                  datasets: Mapping[str, records.ReidDataset], extractor
                  ) -> 'Evaluator':
    """The protocol `name` of config.evals.protocols, on its dataset."""
    raise NotImplementedError

  def run(self, variables) -> dict[str, float]:
    """Metrics of the model `variables`, as {metric: value}."""
    raise NotImplementedError

  def images(self) -> dict[str, np.ndarray]:
    """{tag: uint8 (H, W, 3)} pictures of the last `run` (none by default).

    Drawn on demand, once: what the run kept for them is then released.
    """
    return {}


def protocol_settings(evals, protocol: Mapping[str, Any] | None
                      ) -> dict[str, Any]:
  """config.evals as a dict, with the protocol's own keys overriding it."""
  ev = evals.to_dict() if hasattr(evals, 'to_dict') else dict(evals)
  ev.pop('protocols', None)
  for key, value in (protocol or {}).items():
    if key not in ('type', 'dataset'):
      ev[key] = value
  return ev


def protocol_dataset(name: str, protocol: Mapping[str, Any],
                     datasets: Mapping[str, records.ReidDataset]
                     ) -> records.ReidDataset:
  """datasets[protocol.dataset], or the first dataset when it is not set."""
  if not datasets:
    raise ValueError(f'evaluation protocol {name!r}: no datasets')
  key = protocol.get('dataset') or next(iter(datasets))
  if key not in datasets:
    raise KeyError(f'evaluation protocol {name!r}: unknown dataset {key!r}; '
                   f'known: {list(datasets)}')
  return datasets[key]


class RetrievalEvaluator(Evaluator):
  """Query/gallery retrieval: extracts features, then ranks the gallery."""

  def __init__(self, config, dataset: records.ReidDataset, extractor, *,
               name: str = 'retrieval',
               protocol: Mapping[str, Any] | None = None):
    self.config, self.dataset, self.extractor = config, dataset, extractor
    self.name, self.protocol = name, dict(protocol or {})
    self.stream = (not config.data.get('in_memory', True)
                   or bool(self.settings.get('stream', False)))
    if self.stream and config.data.get('skip_corrupt', False):
      raise ValueError(
          f'evaluation protocol {name!r}: config.data.skip_corrupt is not '
          'supported when query and gallery are streamed from disk '
          '(config.data.in_memory=False or config.evals.stream=True). Remove '
          'the unreadable files, or evaluate in memory (config.data.in_memory'
          '=True, config.evals.stream=False).')
    # Replaced by the decoded subsets at the first in-memory run.
    self.query, self.gallery = dataset.query, dataset.gallery
    self.q_images = self.g_images = None
    self.kept: eval_images.Kept | None = None  # for `images`, set by `run`

  @classmethod
  def from_config(cls, name, protocol, config, datasets, extractor
                  ) -> 'RetrievalEvaluator':
    return cls(config, protocol_dataset(name, protocol, datasets), extractor,
               name=name, protocol=protocol)

  @property
  def settings(self) -> dict[str, Any]:
    """config.evals with this protocol's overrides, read at every use."""
    return protocol_settings(self.config.evals, self.protocol)

  def _decode(self) -> None:
    if self.q_images is None:
      self.q_images, self.query = pipeline.load_split_images(
          self.config, self.dataset.query, f'{self.name} query')
      self.g_images, self.gallery = pipeline.load_split_images(
          self.config, self.dataset.gallery, f'{self.name} gallery')

  def _stream(self, variables, split: records.Split, what: str) -> np.ndarray:
    try:
      return self.extractor.from_paths(
          variables, split.paths, tuple(self.config.data.image_size),
          fields=_fields(split),
          block_size=int(self.settings.get('block_size', 4096)))
    except records.DatasetError as e:
      raise records.DatasetError(
          f'{self.name} {what}, streamed from disk: {e} (skip_corrupt does '
          'not apply to streamed evaluation; to drop unreadable images, set '
          'config.data.in_memory=True and config.evals.stream=False)') from e

  def features(self, variables) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D) query and (G, D) gallery features of `variables`."""
    if self.stream:
      return (self._stream(variables, self.query, 'query'),
              self._stream(variables, self.gallery, 'gallery'))
    self._decode()
    return (self.extractor(variables, self.q_images, _fields(self.query)),
            self.extractor(variables, self.g_images, _fields(self.gallery)))

  def run(self, variables) -> dict[str, float]:
    qf, gf = self.features(variables)
    ev = self.settings
    self.kept = None
    if not eval_images.wanted(ev):
      return self.evaluate(qf, gf)
    rows = eval_images.ranklist_rows(len(qf), ev)
    metrics, dist = _score(qf, gf, self.query, self.gallery, ev, rows)
    self.kept = eval_images.keep(qf, gf, rows, dist, ev)
    return metrics

  def evaluate(self, qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
    return score(qf, gf, self.query, self.gallery, self.settings)

  def images(self) -> dict[str, np.ndarray]:
    """Rank lists `ranklist/<name>/<i>` (i-th picked query, the same at every
    evaluation) and t-SNE `tsne/<name>/{identity,camera}` of the last run."""
    kept, self.kept = self.kept, None
    if kept is None:
      return {}
    return eval_images.draw(kept, self.name, self.query, self.gallery,
                            self.settings, self.config.data.image_size)


def _fields(split: records.Split) -> dict[str, np.ndarray]:
  # Per-record side inputs (modality, ...) for a custom features_fn; splits
  # without `fields` give none.
  return dict(getattr(split, 'fields', None) or {})


def score(qf: np.ndarray, gf: np.ndarray, query, gallery, ev
          ) -> dict[str, float]:
  """Metrics of (Q, D) query and (G, D) gallery features.

  Args:
    qf: (Q, D) query features.
    gf: (G, D) gallery features.
    query: the query Split (pids, camids).
    gallery: the gallery Split.
    ev: config.evals or a dict: metric, max_rank, rerank, rerank_k1,
      rerank_k2, rerank_lambda.

  Returns:
    summarize()'s {'mAP', 'rank1', 'rank5', 'rank10', 'mINP'}.
  """
  return _score(qf, gf, query, gallery, ev)[0]


def _score(qf, gf, query, gallery, ev, rows: np.ndarray | None = None
           ) -> tuple[dict[str, float], np.ndarray | None]:
  """`score`, and the (len(rows), G) distance rows of queries `rows` (None
  without rows): with re-ranking, the rows of the blocks the metrics are
  computed from; else the same programs (`distance.pairwise_distance`, which
  `distance.blocked` shares) on those queries only, junk columns included."""
  max_rank = int(ev.get('max_rank', 50))
  dist = None
  if ev.get('rerank', False):
    from jreid.evaluation import rerank  # pylint: disable=g-import-not-at-top
    # Block by block: at MSMT17 size the re-ranked matrix would be 3.8 GB.
    blocks = rerank.k_reciprocal_blocks(
        qf, gf, k1=int(ev.get('rerank_k1', 20)), k2=int(ev.get('rerank_k2', 6)),
        lambda_value=float(ev.get('rerank_lambda', 0.3)))
    if rows is not None:
      dist = np.zeros((len(rows), len(gf)), np.float32)
      blocks = eval_images.keep_rows(blocks, np.asarray(rows), dist)
    metrics = retrieval.evaluate_blocks(blocks, query.pids, gallery.pids,
                                        query.camids, gallery.camids,
                                        max_rank=max_rank)
  else:
    metric = ev.get('metric', 'euclidean')
    metrics = retrieval.evaluate_features(
        qf, gf, query.pids, gallery.pids, query.camids, gallery.camids,
        metric=metric, max_rank=max_rank)
    if rows is not None:
      dist = np.zeros((0, len(gf)), np.float32)
      if len(rows):
        dist = np.asarray(distance.pairwise_distance(
            np.asarray(qf)[np.asarray(rows)], gf, metric=metric))
  return summarize(metrics), dist


def build(config, datasets, extractor) -> dict[str, Evaluator]:
  """{name: Evaluator} for config.evals.protocols, the primary one first.

  Args:
    config: the run config; reads config.evals.protocols ({name: {type,
      dataset, ...}}; absent or empty: DEFAULT_PROTOCOLS) and
      config.evals.primary (the protocol whose metrics `run_all` also gives
      unprefixed; '' = the first name in iteration order, which for a
      ConfigDict is alphabetical).
    datasets: {key: ReidDataset}; a protocol's `dataset` names a key (default:
      the first). A single ReidDataset is taken as {its name: it}.
    extractor: the Extractor every protocol uses.

  Returns:
    Evaluators in run order, the primary first.

  Raises:
    KeyError: an unknown protocol type (naming the known ones), dataset or
      primary.
  """
  if isinstance(datasets, records.ReidDataset):
    datasets = {datasets.name: datasets}
  protocols = config.evals.get('protocols') or DEFAULT_PROTOCOLS
  names = list(protocols.keys())
  primary = config.evals.get('primary', '')
  if primary:
    if primary not in names:
      raise KeyError(f'config.evals.primary={primary!r} is not a protocol; '
                     f'known: {names}')
    names.remove(primary)
    names.insert(0, primary)
  evaluators = {}
  for name in names:
    protocol = protocols[name]
    if not protocol.get('type'):
      raise ValueError(f'config.evals.protocols.{name} has no type; known: '
                       f'{registry.names("evaluator")}')
    try:
      cls = registry.get('evaluator', protocol['type'])
    except KeyError as e:
      raise KeyError(f'config.evals.protocols.{name}: {e.args[0]}') from None
    evaluators[name] = cls.from_config(name, protocol, config, datasets,
                                       extractor)
  return evaluators


def run_all(evaluators: Mapping[str, Evaluator], variables
            ) -> dict[str, float]:
  """Every protocol's metrics as 'name/metric', plus the first's unprefixed."""
  results, first = {}, None
  for name, ev in evaluators.items():
    metrics = ev.run(variables)
    if first is None:
      first = metrics
    results.update({f'{name}/{k}': v for k, v in metrics.items()})
  return {**(first or {}), **results}

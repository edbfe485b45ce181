"""Identity samplers as pure functions of (labels, cameras, seed, epoch).

`epoch_batches` returns the whole epoch as an int32 (num_batches, batch_size)
array of record indices, so the data iterator's state is just a position in
that array and a resumed run sees exactly the batches it would have seen.

Kinds (spec_unsupervised.md §1.4; BoT / torchreid for 'random_identity'):

  random_identity  RandomIdentitySampler of BoT/torchreid (supervised
                   baseline): each id's indices shuffled (drawn K with
                   replacement when it has fewer than K), cut into chunks of
                   K (incomplete last chunk dropped); batches of P = B/K
                   distinct ids drawn at random from the ids with chunks
                   left, each consuming its next chunk, until fewer than P
                   such ids remain. Batches are exactly P ids x K.
  rmgs             RandomMultipleGallerySampler (CC, SpCL, CACL): per id in
                   random order, a random anchor and K-1 others from other
                   cameras, else from the same camera; drawn without
                   replacement only if the pool has >= K (not K-1) members;
                   singletons emit the anchor alone.
  rmgs_nocam       the same without the camera preference (CC --no-cam).
  more_camera      MoreCameraSampler (ICE): one random instance per camera
                   (cameras ascending); K of them if there are >= K cameras,
                   else filled up to K from the id's other instances (with
                   replacement if too few; resampling the picks if none).
                   Exactly K per id.
  class_uniform    ClassUniformlySampler (CAP): the labels are the classes
                   (camera-aware proxy labels in CAP); K without replacement
                   if a class has >= K members, else its list repeated K
                   times, shuffled, first K.

Outliers: records with label < 0 are never sampled; the references' samplers
all skip negative ids. SpCL and CACL instead give DBSCAN outliers unique
labels before building the dataset, so outliers are singleton ids there
(emitting one index each under 'rmgs'); `outliers_as_singletons=True` does
that relabelling here.

Registered kinds: `register(kind, fn, needs)` adds a kind without touching
this module. `fn(fields, num_instances, batch_size, rng)` returns the index
pieces of one pass, which are concatenated and cut into batches exactly as the
built-ins' are. `fields` holds 'label' (after `outliers_as_singletons`), 'camid'
when camids are given, and every extra per-record array passed as
`epoch_batches(..., fields=...)`; `needs` names the fields the kind cannot do
without. A registered kind may emit index -1: a padding slot, whose fields the
loop sets to -1 (`methods.base.gather_fields`) so that the losses mask it. The
five identity samplers above never pad.

  shuffle          (registered, GCL) a random permutation of every record with
                   label >= 0, with no identity grouping.

Epochs: a sampler pass yields a flat index stream, cut into batches with
drop_last. The references wrap the loader in an IterLoader that restarts the
sampler with a fresh permutation when exhausted and run a fixed number of
iterations per epoch; `num_batches` reproduces that by concatenating the
batches of successive passes. Pass r of epoch e draws from
Generator(PCG64(SeedSequence([seed, e, r]))). The draws follow the
references' distributions, not their torch / `random` bit streams.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

Groups = list[np.ndarray]
# fn(fields, num_instances, batch_size, rng) -> index pieces of one pass.
SamplerFn = Callable[[dict[str, np.ndarray], int, int, np.random.Generator],
                     list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class _Kind:
  fn: Callable[..., list[np.ndarray]]
  needs: tuple[str, ...]
  # The five identity samplers take (groups, camids, k, B, rng) and never pad;
  # registered kinds take the `fields` dict and may emit -1.
  grouped: bool


def _rng(seed: int, epoch: int, restart: int) -> np.random.Generator:
  return np.random.Generator(
      np.random.PCG64(np.random.SeedSequence([seed, epoch, restart])))


def _singleton_outliers(labels: np.ndarray) -> np.ndarray:
  """int64 copy of `labels` with each label < 0 replaced by a new id."""
  labels = labels.astype(np.int64)
  out = labels < 0
  labels[out] = labels.max(initial=-1) + 1 + np.arange(out.sum())
  return labels


def _groups(labels: np.ndarray, outliers_as_singletons: bool) -> Groups:
  """Record indices per label >= 0, ascending within each id, ids sorted."""
  labels = labels.astype(np.int64)
  if outliers_as_singletons:
    labels = _singleton_outliers(labels)
  valid = np.flatnonzero(labels >= 0)
  if not len(valid):
    return []
  order = valid[np.argsort(labels[valid], kind='stable')]
  return np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)


def _random_identity(groups: Groups, camids, k: int, batch_size: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
  del camids
  p = batch_size // k
  chunks = []
  for g in groups:
    idx = rng.choice(g, k, replace=True) if len(g) < k else g
    idx = rng.permutation(idx)
    chunks.append(idx[:len(idx) // k * k].reshape(-1, k))
  n_chunks = np.array([len(c) for c in chunks], np.int64)
  taken = np.zeros(len(groups), np.int64)
  avail = np.arange(len(groups))
  out = []
  while len(avail) >= p:
    for gi in avail[rng.choice(len(avail), p, replace=False)]:
      out.append(chunks[gi][taken[gi]])
      taken[gi] += 1
    avail = avail[taken[avail] < n_chunks[avail]]
  return out


def _rmgs(groups: Groups, camids, k: int, batch_size: int,
          rng: np.random.Generator, use_cameras: bool = True):
  del batch_size
  out = []
  for gi in rng.permutation(len(groups)):
    g = groups[gi]
    a = rng.integers(len(g))
    out.append(g[a:a + 1])
    pool = np.delete(g, a)  # S' = the id's other instances.
    if use_cameras:
      other_cams = g[camids[g] != camids[g[a]]]  # S.
      if len(other_cams):
        pool = other_cams
    if len(pool):  # Without replacement only if |pool| >= K, as reference.
      out.append(rng.choice(pool, k - 1, replace=len(pool) < k))
  return out


def _rmgs_nocam(groups, camids, k, batch_size, rng):
  return _rmgs(groups, camids, k, batch_size, rng, use_cameras=False)


def _more_camera(groups: Groups, camids, k: int, batch_size: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
  del batch_size
  out = []
  for gi in rng.permutation(len(groups)):
    g = groups[gi]
    cams = camids[g]
    picks = np.array([rng.choice(g[cams == c]) for c in np.unique(cams)])
    if len(picks) >= k:
      out.append(rng.choice(picks, k, replace=False))
      continue
    rest = np.setdiff1d(g, picks)
    need = k - len(picks)
    if not len(rest):
      out.append(rng.choice(picks, k, replace=True))
    else:
      out.append(picks)
      out.append(rng.choice(rest, need, replace=len(rest) < need))
  return out


def _class_uniform(groups: Groups, camids, k: int, batch_size: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
  del camids, batch_size
  out = []
  for gi in rng.permutation(len(groups)):
    g = groups[gi]
    out.append(rng.permutation(g if len(g) >= k else np.tile(g, k))[:k])
  return out


def _shuffle(fields: dict[str, np.ndarray], num_instances: int,
             batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
  """GCL: every record with label >= 0 once, in random order."""
  del num_instances, batch_size
  return [rng.permutation(np.flatnonzero(fields['label'] >= 0))]


_TABLE: dict[str, _Kind] = {
    'random_identity': _Kind(_random_identity, (), grouped=True),
    'rmgs': _Kind(_rmgs, ('camid',), grouped=True),
    'rmgs_nocam': _Kind(_rmgs_nocam, (), grouped=True),
    'more_camera': _Kind(_more_camera, ('camid',), grouped=True),
    'class_uniform': _Kind(_class_uniform, (), grouped=True),
}
KINDS: tuple[str, ...] = tuple(_TABLE)
_RESERVED_FIELDS = ('label', 'camid')


def register(kind: str, fn: SamplerFn, needs: tuple[str, ...] = ()) -> None:
  """Adds sampler `kind`, selectable wherever the built-in kinds are.

  Args:
    kind: the name (config.sampler.kind).
    fn: fn(fields, num_instances, batch_size, rng) -> list of 1-D integer
      index arrays, the pieces of one pass (see the module docstring). `fields`
      maps 'label', 'camid' (when given) and the extra fields to read-only
      (N,) arrays; -1 in a piece is a padding slot.
    needs: fields `fn` reads beyond 'label'; epoch_batches raises naming the
      missing one instead of a KeyError inside `fn`.

  Raises:
    ValueError: `kind` names a built-in or a different registered sampler
      (registering the same `fn` again is a no-op).
  """
  global KINDS
  old = _TABLE.get(kind)
  if old is not None and (old.grouped or old.fn is not fn):
    raise ValueError(f'sampler kind {kind!r} is already registered; known: '
                     f'{KINDS}')
  _TABLE[kind] = _Kind(fn, tuple(needs), grouped=False)
  KINDS = tuple(_TABLE)


def _check(labels, camids, kind, batch_size, num_instances, seed, epoch,
           fields=None):
  """Validates arguments; returns labels, camids and the extra fields."""
  if kind not in _TABLE:
    raise ValueError(f'unknown sampler kind {kind!r}; known: {KINDS}')
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a 1-D integer array, got '
                     f'{labels.dtype} {labels.shape}')
  if camids is not None:
    camids = np.asarray(camids)
    if camids.shape != labels.shape:
      raise ValueError(f'camids {camids.shape} and labels {labels.shape} '
                       'differ in shape')
  extra = {}
  for name, values in (fields or {}).items():
    if name in _RESERVED_FIELDS:
      raise ValueError(f'field {name!r} is passed as labels / camids, not in '
                       '`fields`')
    values = np.asarray(values)
    if values.ndim < 1 or len(values) != len(labels):
      raise ValueError(f'field {name!r} has shape {values.shape}; it needs '
                       f'one entry per record ({len(labels)})')
    extra[name] = values
  given = {'label'} | ({'camid'} if camids is not None else set()) | set(extra)
  for name in _TABLE[kind].needs:
    if name not in given:
      if name == 'camid':
        raise ValueError(f'sampler {kind!r} needs camids (field \'camid\')')
      raise ValueError(
          f'sampler {kind!r} needs field {name!r}, which was not given '
          f'(given: {sorted(given)}); pass it as epoch_batches(..., '
          f'fields={{{name!r}: per-record array}})')
  if batch_size < 1 or num_instances < 1:
    raise ValueError(f'batch_size ({batch_size}) and num_instances '
                     f'({num_instances}) must be >= 1')
  if kind == 'random_identity' and batch_size % num_instances:
    raise ValueError(f'random_identity needs batch_size ({batch_size}) to be '
                     f'a multiple of num_instances ({num_instances})')
  if seed < 0 or epoch < 0:
    raise ValueError(f'seed ({seed}) and epoch ({epoch}) must be >= 0')
  return labels, camids, extra


def _no_batch_error(kind, labels, stream_len, batch_size, k, groups=None):
  if groups is None:  # A registered kind: no id grouping to report.
    what = f'{np.sum(labels >= 0)} of {len(labels)} records have label >= 0'
  else:
    what = (f'{len(groups)} ids with label >= 0 ({sum(map(len, groups))} of '
            f'{len(labels)} records; label -1 = outlier is skipped)')
  need = (f'P = batch_size / num_instances = {batch_size // k} distinct ids'
          if kind == 'random_identity' else f'{batch_size} indices')
  return ValueError(
      f'sampler {kind!r} cannot fill one batch: {what} give {stream_len} '
      f'indices per pass, and a batch needs {need}. Lower batch_size, or '
      f'check the (pseudo) labels: clustering may have found too few '
      f'clusters.')


def _read_only(a: np.ndarray) -> np.ndarray:
  a = a.view()
  a.flags.writeable = False  # `fields` are shared by every pass.
  return a


def _pass_fn(kind, labels, camids, extra, outliers_as_singletons):
  """draw(rng, k, batch_size) -> (pieces of one pass, groups or None)."""
  spec = _TABLE[kind]
  if spec.grouped:
    groups = _groups(labels, outliers_as_singletons)
    return lambda rng, k, batch_size: (
        spec.fn(groups, camids, k, batch_size, rng), groups)
  fields = {'label': _singleton_outliers(labels) if outliers_as_singletons
            else labels}
  if camids is not None:
    fields['camid'] = camids
  fields = {k: _read_only(v) for k, v in {**fields, **extra}.items()}
  n = len(labels)

  def draw(rng, k, batch_size):
    parts = []
    for part in spec.fn(dict(fields), k, batch_size, rng):
      part = np.asarray(part)
      if part.size and (part.ndim != 1 or
                        not np.issubdtype(part.dtype, np.integer)):
        raise ValueError(f'sampler {kind!r} returned a piece of '
                         f'{part.dtype} {part.shape}; pieces must be 1-D '
                         'integer index arrays')
      if part.size and (part.min() < -1 or part.max() >= n):
        raise ValueError(f'sampler {kind!r} returned indices in '
                         f'[{part.min()}, {part.max()}]; they must lie in '
                         f'[-1, {n}) (-1 = padding)')
      parts.append(part.reshape(-1).astype(np.int64))
    return parts, None

  return draw


def epoch_batches(labels, camids=None, *, kind: str, batch_size: int,
                  num_instances: int, seed: int, epoch: int,
                  num_batches: int | None = None,
                  outliers_as_singletons: bool = False,
                  fields: Mapping[str, np.ndarray] | None = None
                  ) -> np.ndarray:
  """The batches of one epoch, deterministic in (labels, camids, seed, epoch).

  Args:
    labels: (N,) int ids or pseudo labels per record; < 0 = outlier.
    camids: (N,) int camera ids; required for 'rmgs' and 'more_camera'.
    kind: one of KINDS (see the module docstring).
    batch_size: B, indices per batch.
    num_instances: K, instances per id.
    seed: run seed, >= 0.
    epoch: epoch number, >= 0.
    num_batches: fixed iterations per epoch (restarting the sampler when a
      pass is exhausted); None = the natural epoch of one pass, drop_last.
    outliers_as_singletons: give each label < 0 record its own id (SpCL and
      CACL) instead of skipping it.
    fields: extra per-record arrays (leading dim N) for registered kinds,
      e.g. {'modality': ...}; not 'label' or 'camid'. The built-ins ignore
      them.

  Returns:
    int32 (num_batches, batch_size) indices into the N records; -1 = a
    padding slot (registered kinds only).

  Raises:
    ValueError: bad arguments, a field the kind needs is missing, or a pass
      that cannot fill a single batch.
  """
  labels, camids, extra = _check(labels, camids, kind, batch_size,
                                 num_instances, seed, epoch, fields)
  if num_batches is not None and num_batches < 1:
    raise ValueError(f'num_batches must be >= 1 or None, got {num_batches}')
  draw = _pass_fn(kind, labels, camids, extra, outliers_as_singletons)
  blocks, total, restart = [], 0, 0
  while num_batches is None or total < num_batches:
    parts, groups = draw(_rng(seed, epoch, restart), num_instances,
                         batch_size)
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    n = len(stream) // batch_size
    if n == 0:
      raise _no_batch_error(kind, labels, len(stream), batch_size,
                            num_instances, groups)
    blocks.append(stream[:n * batch_size].reshape(n, batch_size))
    total += n
    restart += 1
    if num_batches is None:
      break
  return np.concatenate(blocks)[:num_batches].astype(np.int32)


def num_batches_per_epoch(labels, camids=None, *, kind: str, batch_size: int,
                          num_instances: int, seed: int = 0, epoch: int = 0,
                          outliers_as_singletons: bool = False,
                          fields: Mapping[str, np.ndarray] | None = None
                          ) -> int:
  """Batches in the natural epoch (one pass, drop_last).

  Closed form for the identity kinds but 'random_identity', whose length
  depends on the draws (ids with many chunks can outlast the others), so it
  runs that epoch's sampler for (seed, epoch), as for every registered kind.
  """
  labels, camids, extra = _check(labels, camids, kind, batch_size,
                                 num_instances, seed, epoch, fields)
  if kind == 'random_identity' or not _TABLE[kind].grouped:
    return len(epoch_batches(
        labels, camids, kind=kind, batch_size=batch_size,
        num_instances=num_instances, seed=seed, epoch=epoch,
        outliers_as_singletons=outliers_as_singletons, fields=extra))
  groups = _groups(labels, outliers_as_singletons)
  sizes = np.array([len(g) for g in groups], np.int64)
  if kind in ('rmgs', 'rmgs_nocam'):  # Singletons emit only the anchor.
    stream_len = int(np.where(sizes > 1, num_instances, 1).sum())
  else:
    stream_len = num_instances * len(groups)
  if stream_len < batch_size:
    raise _no_batch_error(kind, labels, stream_len, batch_size,
                          num_instances, groups)
  return stream_len // batch_size


register('shuffle', _shuffle)

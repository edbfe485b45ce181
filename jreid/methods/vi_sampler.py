"""MULT's batch samplers (spec_vi_mult.md §5.3, §7.3), as pure functions.

Every batch is P * K visible records followed by P * K infrared records
(index (B,) with B = 2 P K), so the step can split it at a static position.
Draws come from Generator(PCG64(SeedSequence([seed, epoch, batch]))): a pure
function of (labels, seed, epoch), so a resumed run sees the same batches.

  stage_one   (StageOneSampler) per batch: P visible clusters and,
              independently, P infrared clusters, each without replacement;
              K members of each cluster, without replacement iff the cluster
              has more than K members.
  stage_two   (StageThreeSampler) with L_v = visible-space labels held by
              some visible record (y_v) and some infrared record (y_{r->v}),
              L_r likewise in the infrared space: P/2 labels from L_v and
              P/2 from L_r per batch; for l in L_v, K visible records with
              y_v = l and K infrared with y_{r->v} = l; for m in L_r, K
              visible with y_{v->r} = m and K infrared with y_r = m.
"""

from __future__ import annotations

import numpy as np


def _rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
  return np.random.Generator(np.random.PCG64(
      np.random.SeedSequence([seed, epoch, batch])))


def _members(labels: np.ndarray, pool: np.ndarray) -> dict[int, np.ndarray]:
  """{label: record indices} over the records `pool` with label >= 0."""
  pool = pool[labels[pool] >= 0]
  order = pool[np.argsort(labels[pool], kind='stable')]
  keys, starts = np.unique(labels[order], return_index=True)
  return dict(zip(keys.tolist(), np.split(order, starts[1:])))


def _take(rng, members: np.ndarray, k: int) -> np.ndarray:
  return rng.choice(members, k, replace=len(members) <= k)


def _check(what: str, have: int, need: int) -> None:
  if have < need:
    raise ValueError(
        f'{what}: {have} usable labels, a batch needs {need} '
        '(config.sampler.batch_size labels per modality); lower '
        'config.sampler.batch_size or loosen the clustering '
        '(config.method.eps)')


def stage_one(label_v: np.ndarray, label_r: np.ndarray,
              modality: np.ndarray, *, num_labels: int, num_instances: int,
              seed: int, epoch: int, num_batches: int) -> np.ndarray:
  """(num_batches, 2 P K) record indices of DCL's batches.

  Args:
    label_v: (N,) visible-space labels (visible records; -1 elsewhere).
    label_r: (N,) infrared-space labels (infrared records).
    modality: (N,) 0 visible, 1 infrared.
    num_labels: P, clusters per modality and batch (12).
    num_instances: K, records per cluster (12).
  """
  vis = _members(label_v, np.flatnonzero(modality == 0))
  ir = _members(label_r, np.flatnonzero(modality == 1))
  _check('visible clusters', len(vis), num_labels)
  _check('infrared clusters', len(ir), num_labels)
  vkeys, rkeys = np.array(sorted(vis)), np.array(sorted(ir))
  out = []
  for b in range(num_batches):
    rng = _rng(seed, epoch, b)
    row = [_take(rng, vis[int(l)], num_instances)
           for l in rng.choice(vkeys, num_labels, replace=False)]
    row += [_take(rng, ir[int(l)], num_instances)
            for l in rng.choice(rkeys, num_labels, replace=False)]
    out.append(np.concatenate(row))
  return np.stack(out).astype(np.int32)


def shared_labels(label_v: np.ndarray, label_r: np.ndarray,
                  modality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(L_v, L_r): the labels of each space held by both modalities."""
  vis, ir = modality == 0, modality == 1
  lv = np.intersect1d(label_v[vis & (label_v >= 0)],
                      label_v[ir & (label_v >= 0)])
  lr = np.intersect1d(label_r[ir & (label_r >= 0)],
                      label_r[vis & (label_r >= 0)])
  return lv, lr


def stage_two(label_v: np.ndarray, label_r: np.ndarray,
              modality: np.ndarray, *, num_labels: int, num_instances: int,
              seed: int, epoch: int, num_batches: int) -> np.ndarray:
  """(num_batches, 2 P K) record indices of MULT's stage-2 batches.

  label_v holds every record's visible-space label (y_v for visible,
  y_{r->v} for infrared records) and label_r its infrared-space label.
  """
  if num_labels % 2:
    raise ValueError(f'stage 2 draws half its {num_labels} labels from each '
                     'space; config.sampler.batch_size must be even')
  half = num_labels // 2
  vis, ir = np.flatnonzero(modality == 0), np.flatnonzero(modality == 1)
  lv, lr = shared_labels(label_v, label_r, modality)
  _check('visible-space labels held by both modalities', len(lv), half)
  _check('infrared-space labels held by both modalities', len(lr), half)
  v_by_v, r_by_v = _members(label_v, vis), _members(label_v, ir)
  v_by_r, r_by_r = _members(label_r, vis), _members(label_r, ir)
  out = []
  for b in range(num_batches):
    rng = _rng(seed, epoch, b)
    pick_v = rng.choice(lv, half, replace=False).tolist()
    pick_r = rng.choice(lr, half, replace=False).tolist()
    rgb = ([_take(rng, v_by_v[l], num_instances) for l in pick_v]
           + [_take(rng, v_by_r[m], num_instances) for m in pick_r])
    inf = ([_take(rng, r_by_v[l], num_instances) for l in pick_v]
           + [_take(rng, r_by_r[m], num_instances) for m in pick_r])
    out.append(np.concatenate(rgb + inf))
  return np.stack(out).astype(np.int32)

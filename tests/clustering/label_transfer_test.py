"""MULT's label transfer against direct numpy transcriptions of the reference.

The transcriptions below follow `cross_association.py` (spec_vi_mult §6)
line by line in float64 with dense matrices, deliberately naive: K =
exp(-λ C) as is, dense diagonal-free scaling, rownorm of dense matrices.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from jreid.clustering import jaccard
from jreid.clustering import label_transfer as lt


# ----------------------------------------------------------------------------
# Transcriptions.


def ref_sqdist(x, y):
  return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :]) - 2 * x @ y.T


def ref_sinkhorn(cost, lam=25.0, max_iter=500, tol=0.1):
  n, m = cost.shape
  k = np.exp(-lam * cost)
  b = np.full(m, 1.0 / m)
  err, step = 1e6, 0
  while err > tol and step < max_iter:
    a = (1.0 / n) / (k @ b)
    b_new = (1.0 / m) / (k.T @ a)
    if step % 10 == 0:
      err = np.nansum(np.abs(b / b_new - 1))
    b = b_new
    step += 1
  return a[:, None] * k * b[None, :], step


def ref_softmax(z):
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


def ref_rownorm(a):
  return a / a.sum(1, keepdims=True)


def ref_lp(aff_a, aff_b, aff_ab, aff_ba, y_a0, y_ba0, alpha=0.2, max_iter=20,
           tol=0.01):
  y_a, y_ba = y_a0.copy(), y_ba0.copy()
  old_a, old_ba = y_a0.copy(), y_ba0.copy()
  eps, it = 1e6, 0
  while eps > tol and it < max_iter:
    y_a = (1 - alpha) * aff_ab @ y_ba + alpha * y_a0
    y_ba = (1 - alpha) * aff_ba @ y_a + alpha * y_ba0
    y_a = 0.5 * aff_a @ y_a + 0.5 * y_a
    y_ba = 0.5 * aff_b @ y_ba + 0.5 * y_ba
    eps = max(np.abs(y_ba - old_ba).sum() / old_ba.sum(),
              np.abs(y_a - old_a).sum() / old_a.sum())
    old_a, old_ba = y_a.copy(), y_ba.copy()
    it += 1
  return y_a, y_ba, it


def ref_mult(fv, fr, cv, cr, dv, dr, alpha=0.2, temp=0.05):
  out = {'y0_rgb': ref_softmax(fv @ cv.T / temp),
         'y0_ir': ref_softmax(fr @ cr.T / temp)}
  p, s1 = ref_sinkhorn(ref_sqdist(fv, cr))
  out['y0_rgb_cm'] = np.eye(len(cr))[p.argmax(1)]
  p, s2 = ref_sinkhorn(ref_sqdist(fr, cv))
  out['y0_ir_cm'] = np.eye(len(cv))[p.argmax(1)]
  t, s3 = ref_sinkhorn(ref_sqdist(fv, fr))
  out.update(plan_cross=t, aff_rgb=ref_rownorm(1 - dv),
             aff_ir=ref_rownorm(1 - dr), aff_rgb_ir=ref_rownorm(t),
             aff_ir_rgb=ref_rownorm(t.T))
  out['y_ir'], out['y_rgb_cm'], i1 = ref_lp(
      out['aff_ir'], out['aff_rgb'], out['aff_ir_rgb'], out['aff_rgb_ir'],
      out['y0_ir'], out['y0_rgb_cm'], alpha)
  out['y_rgb'], out['y_ir_cm'], i2 = ref_lp(
      out['aff_rgb'], out['aff_ir'], out['aff_rgb_ir'], out['aff_ir_rgb'],
      out['y0_rgb'], out['y0_ir_cm'], alpha)
  out['sinkhorn_steps'] = (s1, s2, s3)
  out['lp_iters'] = (i1, i2)
  return out


# ----------------------------------------------------------------------------
# Data.


def unit(rng, n, d):
  x = rng.standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def two_modalities(seed, ids=5, per_id=(12, 9), dim=16, noise=0.45):
  """Unit features of `ids` identities in two modalities (shared identity
  centres, a modality offset) and their identity labels."""
  rng = np.random.default_rng(seed)
  centres = unit(rng, ids, dim)
  offsets = unit(rng, 2, dim) * 0.3
  out = []
  for mod, per in enumerate(per_id):
    pid = np.repeat(np.arange(ids), per)
    x = centres[pid] + offsets[mod] + noise * unit(rng, len(pid), dim)
    out.append((x / np.linalg.norm(x, axis=1, keepdims=True), pid))
  return out


def below_one(d):
  """The sparse form of a dense Jaccard matrix: entries < 1, zeros kept."""
  rows, cols = np.nonzero(d < 1)
  return sp.csr_array((d[rows, cols], (rows, cols)), shape=d.shape)


def centres_of(x, labels):
  return np.stack([x[labels == k].mean(0) for k in range(labels.max() + 1)])


# (dtype, rtol): float64 under x64 against the float64 transcription, and
# float32 against the same with a looser tolerance.
PRECISIONS = [(np.float64, 1e-9), (np.float32, 2e-4)]


def assert_close(actual, expected, rtol, atol_scale=1.0):
  actual = np.asarray(actual, np.float64)
  np.testing.assert_allclose(actual, expected, rtol=rtol,
                             atol=rtol * atol_scale * np.abs(expected).max())


# ----------------------------------------------------------------------------
# Sinkhorn.


@pytest.mark.parametrize('dtype,rtol', PRECISIONS)
@pytest.mark.parametrize('shape,seed', [((40, 30), 0), ((7, 120), 1),
                                        ((150, 4), 2), ((1, 9), 3)])
def test_sinkhorn_matches_transcription(dtype, rtol, shape, seed):
  rng = np.random.default_rng(seed)
  cost = ref_sqdist(unit(rng, shape[0], 8), unit(rng, shape[1], 8))
  expected, steps = ref_sinkhorn(cost)
  with jax.enable_x64(dtype == np.float64):
    plan, got = lt.sinkhorn(cost.astype(dtype))
    assert plan.dtype == dtype
    plan = np.asarray(plan, np.float64)
  assert got == steps
  assert got == 500 or got % 10 == 1
  assert_close(plan, expected, rtol)
  # b' is the last update, so every column sums to exactly 1/m (rows do not).
  np.testing.assert_allclose(plan.sum(0) * shape[1], 1.0, rtol=rtol)


def test_sinkhorn_step_counts():
  # A constant cost: b' = b at once, the first check stops after 1 step.
  assert lt.sinkhorn(np.ones((5, 4)))[1] == 1
  # tol=0 never stops: max_iter steps.
  assert lt.sinkhorn(np.eye(6, 5), max_iter=37, tol=0.0)[1] == 37
  # A nearly uniform cost: the first check (against the uniform start) is
  # just above tol, the second (step 10) below: 11 steps.
  rng = np.random.default_rng(0)
  cost = 1.0 + 0.01 * rng.standard_normal((30, 20))
  expected, steps = ref_sinkhorn(cost)
  assert steps == 11
  with jax.enable_x64(True):
    plan, got = lt.sinkhorn(cost)
  assert got == 11
  assert_close(plan, expected, 1e-10)
  assert lt.sinkhorn(cost.astype(np.float32))[1] == 11


@pytest.mark.parametrize('dtype,rtol', PRECISIONS)
def test_sinkhorn_features_never_underflows(dtype, rtol):
  # λ = 25 on costs in [0, 4]: e^-100 underflows float32 (it is a denormal
  # that accelerators flush). Here an IR point is antipodal to every RGB one
  # and an RGB point duplicates an IR one, the extremes of both rows and
  # columns; the float64 transcription is the reference.
  rng = np.random.default_rng(4)
  x = unit(rng, 20, 6)
  y = unit(rng, 12, 6)
  y[0] = -x.mean(0) / np.linalg.norm(x.mean(0))
  x[:, 0] = np.abs(x[:, 0]) + 1.0
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y[0] = -np.abs(y[0])
  y[1] = x[3]
  cost = ref_sqdist(x, y)
  assert cost.max() > 3.0 and cost.min() < 1e-6
  expected, steps = ref_sinkhorn(cost)
  with jax.enable_x64(dtype == np.float64):
    plan, got = lt._sinkhorn_between(jax.numpy.asarray(x, dtype),
                                     jax.numpy.asarray(y, dtype))
    plan = np.asarray(plan, np.float64)
  assert np.isfinite(plan).all()
  assert got == steps
  assert_close(plan, expected, rtol)


# ----------------------------------------------------------------------------
# Affinities and propagation.


@pytest.mark.parametrize('dtype,rtol', PRECISIONS)
def test_affinities(dtype, rtol):
  rng = np.random.default_rng(5)
  (xv, _), (xr, _) = two_modalities(5)
  d = jaccard.jaccard_distance(xv.astype(np.float32), k1=6, k2=2)
  assert (d == 1).any() and (d < 1).any()
  with jax.enable_x64(dtype == np.float64):
    dense = np.asarray(lt.homogeneous_affinity(d, dtype))
    graph = below_one(d)
    assert graph.nnz == (d < 1).sum()  # the zero diagonal is stored
    sparse = lt.homogeneous_affinity(graph, dtype)
    y = rng.random((len(d), 4)).astype(dtype)
    np.testing.assert_allclose(np.asarray(sparse @ y), dense @ y, rtol=rtol,
                               atol=rtol)
    plan, _ = lt.sinkhorn(ref_sqdist(xv, xr).astype(dtype))
    plan = jax.numpy.asarray(plan)
    t = np.asarray(plan, np.float64)
    rows = lt.RowNormalized(plan, plan.sum(1), transposed=False)
    cols = lt.RowNormalized(plan, plan.sum(0), transposed=True)
    yr = rng.random((len(xr), 3)).astype(dtype)
    yv = rng.random((len(xv), 3)).astype(dtype)
    assert rows.shape == t.shape and cols.shape == t.T.shape
    assert_close(np.asarray(rows @ yr), ref_rownorm(t) @ yr, rtol)
    assert_close(np.asarray(cols @ yv), ref_rownorm(t.T) @ yv, rtol)
  assert_close(dense, ref_rownorm(1 - d.astype(np.float64)), rtol)
  assert_close(np.asarray(sparse), dense, rtol)
  assert_close(np.asarray(rows), ref_rownorm(t), rtol)
  assert_close(np.asarray(cols), ref_rownorm(t.T), rtol)


@pytest.mark.parametrize('path', ['scipy', 'dense_blocks', 'device'])
def test_sparse_affinity_products(monkeypatch, path):
  # The three ways of multiplying (threaded scipy on row slices, dense row
  # blocks, device BCSR as used off CPU) agree with the dense rownorm(1 - D).
  rng = np.random.default_rng(6)
  n = 300
  d = np.where(rng.random((n, n)) < 0.05, rng.random((n, n)), 1.0)
  np.fill_diagonal(d, 0.0)
  monkeypatch.setattr(lt, '_THREADS', 3)  # uneven slices
  monkeypatch.setattr(lt, '_DENSE_ABOVE', 0.0 if path == 'dense_blocks'
                      else 1.0)
  monkeypatch.setattr(lt, '_DENSE_BLOCK', 7 * n)  # several blocks
  monkeypatch.setattr(lt, '_SPARSE_COLUMNS', 2)  # column blocks, one short
  monkeypatch.setattr(lt, '_FORCE_DEVICE_SPARSE', path == 'device')
  aff = lt.homogeneous_affinity(below_one(d))
  y = rng.random((n, 5)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(aff @ y), ref_rownorm(1 - d) @ y,
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(aff @ y[:, 0]),
                             ref_rownorm(1 - d) @ y[:, 0], rtol=1e-5)
  if path == 'scipy':  # column blocks sum each column as one product does
    np.testing.assert_array_equal(np.asarray(aff @ y),
                                  np.asarray(aff.matrix @ y))
  np.testing.assert_allclose(np.asarray(aff), ref_rownorm(1 - d), rtol=1e-5,
                             atol=1e-7)


def random_stochastic(rng, n, m, density=1.0):
  a = rng.random((n, m)) * (rng.random((n, m)) < density)
  a[np.arange(n), rng.integers(0, m, n)] += 0.1
  return ref_rownorm(a)


@pytest.mark.parametrize('dtype,rtol', PRECISIONS)
@pytest.mark.parametrize('alpha,tol,max_iter', [(0.2, 0.01, 20),
                                                (0.2, 0.0, 7),
                                                (0.5, 0.05, 20)])
def test_propagate_matches_transcription(dtype, rtol, alpha, tol, max_iter):
  rng = np.random.default_rng(7)
  na, nb, k = 23, 17, 6
  aff_a = random_stochastic(rng, na, na, 0.3)
  aff_b = random_stochastic(rng, nb, nb, 0.3)
  aff_ab = random_stochastic(rng, na, nb)
  aff_ba = random_stochastic(rng, nb, na)
  y_a0 = ref_softmax(rng.standard_normal((na, k)) * 3)
  y_ba0 = np.eye(k)[rng.integers(0, k, nb)]
  ya, yba, its = ref_lp(aff_a, aff_b, aff_ab, aff_ba, y_a0, y_ba0, alpha,
                        max_iter, tol)
  assert its == max_iter if tol == 0 else 1 < its < max_iter
  with jax.enable_x64(dtype == np.float64):
    got_a, got_ba, got_its = lt.propagate(
        *(m.astype(dtype) for m in (aff_a, aff_b, aff_ab, aff_ba, y_a0,
                                    y_ba0)), alpha=alpha, max_iter=max_iter,
        tol=tol)
    assert got_a.dtype == dtype
  assert got_its == its
  assert_close(got_a, ya, rtol)
  assert_close(got_ba, yba, rtol)
  # Rows stay probability vectors.
  np.testing.assert_allclose(np.asarray(got_a).sum(1), 1.0, rtol=rtol)


# ----------------------------------------------------------------------------
# mult, soft targets, transfer.


def mult_inputs(seed):
  (xv, pv), (xr, pr) = two_modalities(seed)
  dv = jaccard.jaccard_distance(xv.astype(np.float32), k1=6, k2=2)
  dr = jaccard.jaccard_distance(xr.astype(np.float32), k1=6, k2=2)
  # Clusters: the identities, one of them split in RGB (K_v != K_r).
  lv = pv.copy()
  lv[(pv == 0) & (np.arange(len(pv)) % 2 == 0)] = pv.max() + 1
  return xv, xr, centres_of(xv, lv), centres_of(xr, pr), dv, dr


KEYS = ('y0_rgb', 'y0_ir', 'y0_rgb_cm', 'y0_ir_cm', 'plan_cross', 'aff_rgb',
        'aff_ir', 'aff_rgb_ir', 'aff_ir_rgb', 'y_rgb', 'y_ir', 'y_rgb_cm',
        'y_ir_cm')


@pytest.mark.parametrize('dtype,rtol', PRECISIONS)
def test_mult_matches_transcription(dtype, rtol):
  xv, xr, cv, cr, dv, dr = mult_inputs(8)
  expected = ref_mult(xv, xr, cv, cr, dv.astype(np.float64),
                      dr.astype(np.float64))
  # Sparse graphs holding D < 1 (and the diagonal) give the same result.
  sparse = [below_one(d) for d in (dv, dr)]
  with jax.enable_x64(dtype == np.float64):
    args = [a.astype(dtype) for a in (xv, xr, cv, cr)]
    dense_out = lt.mult(*args, dv.astype(dtype), dr.astype(dtype))
    sparse_out = lt.mult(*args, *sparse)
    assert dense_out['y_rgb'].dtype == dtype
    for out in (dense_out, sparse_out):
      assert out['sinkhorn_steps'] == expected['sinkhorn_steps']
      assert out['lp_iters'] == expected['lp_iters']
      for key in KEYS:
        assert np.shape(out[key]) == expected[key].shape, key
        assert_close(np.asarray(out[key]), expected[key], rtol)
  assert max(expected['lp_iters']) > 1
  assert expected['y_rgb'].shape == (len(xv), len(cv))
  assert expected['y_rgb_cm'].shape == (len(xv), len(cr))


def test_soft_targets():
  y = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], np.float32)
  q = np.asarray(lt.soft_targets(y, beta=0.7))
  np.testing.assert_allclose(q, 0.7 * np.eye(3)[[1, 0]] + 0.3 * y, rtol=1e-6)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(lt.soft_targets(y, beta=0.0)), y)


def test_overlap_graph_is_the_dense_matrix_below_one():
  (xv, _), _ = two_modalities(9)
  x = xv.astype(np.float32)
  v = jaccard.encode(x, 6, 2)
  graph = lt.overlap_graph(v)
  dense = jaccard.jaccard_distance(x, 6, 2)
  stored = graph.toarray()
  mask = np.zeros(dense.shape, bool)  # the stored pattern, zeros included
  mask[np.repeat(np.arange(len(x)), np.diff(graph.indptr)), graph.indices] = 1
  assert mask[np.diag_indices(len(x))].all()
  np.testing.assert_array_equal(np.where(mask, stored, 1.0), dense)
  assert (dense[~mask] == 1).all()
  radius = jaccard.radius_graph(v, 0.6)
  np.testing.assert_array_equal(lt.within(graph, 0.6).toarray(),
                                radius.toarray())


def test_transfer_recovers_identities():
  (xv, pv), (xr, pr) = two_modalities(10, ids=4, per_id=(20, 16), dim=32,
                                      noise=0.3)
  out = lt.transfer(xv.astype(np.float32), xr.astype(np.float32), k1=8, k2=3,
                    eps=0.6)
  for labels, pid in ((out['dbscan_rgb'], pv), (out['dbscan_ir'], pr)):
    # One cluster per identity; a few RGB outliers, which MULT labels too.
    assert labels.max() == 3
    assert len(set(zip(labels[labels >= 0], pid[labels >= 0]))) == 4
  assert (out['dbscan_rgb'] < 0).any()
  rgb_to_pid = dict(zip(out['dbscan_rgb'], pv))
  ir_to_pid = dict(zip(out['dbscan_ir'], pr))
  np.testing.assert_array_equal([rgb_to_pid[k] for k in out['labels_rgb']],
                                pv)
  np.testing.assert_array_equal([ir_to_pid[k] for k in out['labels_ir']], pr)
  # Cross-modality labels: each RGB image gets its identity's IR cluster.
  np.testing.assert_array_equal(
      [ir_to_pid[k] for k in out['cm_labels_rgb']], pv)
  np.testing.assert_array_equal(
      [rgb_to_pid[k] for k in out['cm_labels_ir']], pr)
  assert out['labels_rgb'].dtype == np.int32
  assert out['centers_rgb'].shape == (4, 32)
  for key, labels in (('q_rgb', 'labels_rgb'), ('q_ir', 'labels_ir'),
                      ('q_rgb_cm', 'cm_labels_rgb'),
                      ('q_ir_cm', 'cm_labels_ir')):
    q = np.asarray(out[key])
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(q.argmax(1), out[labels])
    assert (q.max(1) >= 0.7).all()


def test_transfer_names_the_modality_without_clusters():
  (xv, _), (xr, _) = two_modalities(11, ids=3, per_id=(15, 15), dim=32,
                                    noise=0.3)
  noise = unit(np.random.default_rng(12), 40, 32).astype(np.float32)
  with pytest.raises(ValueError, match='infrared'):
    lt.transfer(xv.astype(np.float32), noise, k1=8, k2=3, eps=0.3)
  with pytest.raises(ValueError, match='visible'):
    lt.transfer(noise, xr.astype(np.float32), k1=8, k2=3, eps=0.3)

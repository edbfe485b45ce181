"""GCL's view-invariant losses and memory against numpy (spec_thesis §4.8)."""

import jax
from jax import test_util as jtu  # pylint: disable=g-importing-member
import jax.numpy as jnp
import numpy as np
import pytest

from jreid.losses import view_invariant as vi


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _case(seed=0, n=30, b=4, d=6, k=7):
  rng = np.random.default_rng(seed)
  labels = rng.integers(-1, 4, n)
  idx = rng.choice(np.flatnonzero(labels >= 0), b, replace=False)
  memory = _unit(rng.normal(size=(n, d)))
  f, f2 = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
  slots = jax.device_get(vi.draw(jax.random.key(seed), jnp.asarray(labels),
                                 jnp.asarray(labels[idx]), k))
  return labels, idx, memory, f, f2, slots


def _np_losses(f, f2, memory, idx, slots, tau, own_slot=True):
  def ce(pos, neg, mask):
    out = []
    for i in range(len(pos)):
      logits = np.concatenate([[pos[i]], neg[i][mask[i]]]) / tau
      m = logits.max()
      out.append(m + np.log(np.exp(logits - m).sum()) - pos[i] / tau)
    return np.mean(out)
  neg = np.einsum('bd,bkd->bk', f2, memory[slots['neg']])
  mask = slots['neg_mask']
  own = memory[idx] if own_slot else f
  a = ce(np.sum(f * memory[slots['pos_a']], -1), neg, mask)
  b = ce(np.sum(f2 * own, -1), neg, mask)
  c = ce(np.sum(f2 * memory[slots['pos_b']], -1), neg, mask)
  return a, b, c


def test_draw_respects_labels_and_draws_without_replacement():
  labels, idx, _, _, _, slots = _case()
  y = labels[idx]
  assert np.all(labels[slots['pos_a']] == y)
  assert np.all(labels[slots['pos_b']] == y)
  for i in range(len(idx)):
    chosen = slots['neg'][i][slots['neg_mask'][i]]
    assert len(set(chosen.tolist())) == len(chosen) == min(
        7, np.sum(labels != y[i]))
    assert np.all(labels[chosen] != y[i])  # outliers (-1) may be negatives


def test_too_few_negatives_are_masked():
  labels = np.array([0, 0, 0, 1, -1, 0])
  slots = jax.device_get(vi.draw(jax.random.key(1), jnp.asarray(labels),
                                 jnp.asarray([0]), 5))
  assert slots['neg'].shape == (1, 5)
  assert sorted(slots['neg'][0][slots['neg_mask'][0]].tolist()) == [3, 4]


def test_negatives_are_uniform():
  labels = np.array([0] * 4 + [1] * 8 + [-1] * 4)
  draw = jax.jit(lambda key: vi.draw(key, jnp.asarray(labels),
                                     jnp.zeros(1, jnp.int32), 3))
  counts = np.zeros(len(labels))
  for s in range(600):
    np.add.at(counts, np.asarray(draw(jax.random.key(s))['neg'][0]), 1)
  assert counts[:4].sum() == 0
  # Each of the 12 other slots: 600 * 3 / 12 = 150 expected picks.
  np.testing.assert_allclose(counts[4:], 150, atol=45)


@pytest.mark.parametrize('own_slot', [True, False])
def test_losses_match_numpy(own_slot):
  _, idx, memory, f, f2, slots = _case(seed=2)
  got = vi.losses(jnp.asarray(f, jnp.float32), jnp.asarray(f2, jnp.float32),
                  jnp.asarray(memory, jnp.float32), jnp.asarray(idx),
                  jax.tree.map(jnp.asarray, slots), tau=0.04,
                  own_slot=own_slot)
  a, b, c = _np_losses(f, f2, memory, idx, slots, 0.04, own_slot)
  np.testing.assert_allclose([got['vi'], got['vi_prime'], got['vi_second']],
                             [a, b, c], rtol=2e-4)
  np.testing.assert_allclose(got['total'], a + b + c, rtol=2e-4)


def test_gradients_reach_both_views_and_not_the_memory():
  _, idx, memory, f, f2, slots = _case(seed=3)
  slots = jax.tree.map(jnp.asarray, slots)
  with jax.enable_x64(True):
    fn = lambda a, b, m: vi.losses(a, b, m, jnp.asarray(idx), slots,
                                   tau=0.5)['total']
    args = (jnp.asarray(f), jnp.asarray(f2), jnp.asarray(memory))
    jtu.check_grads(lambda a, b: fn(a, b, args[2]), args[:2],
                              order=1, modes=['rev'], eps=1e-5)
    assert np.all(jax.grad(fn, argnums=2)(*args) == 0)


def test_memory_update_matches_numpy():
  _, idx, memory, f, _, _ = _case(seed=4)
  got = np.asarray(vi.update(jnp.asarray(memory), jnp.asarray(idx),
                             jnp.asarray(f), 0.2))
  want = memory.copy()
  want[idx] = _unit(0.2 * memory[idx] + 0.8 * f)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

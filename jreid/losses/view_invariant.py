"""GCL's instance memory and view-invariant losses (spec_thesis.md §4.8;
chenhao2345/GCL gcl/models/memory.py).

The memory M (N, 512) holds one L2-normalised slot per training image. For a
batch of anchors with memory indices idx (B,) and pseudo labels y (B,), with
f and f2 the L2-normalised E_id features of the original image x and of its
generated novel view x'_new:

  pos_a, pos_b  two independent uniform draws among the slots of label y_i
                (the anchor's own slot included)
  negs          up to K slots drawn uniformly without replacement among the
                slots of other labels (outliers, label -1, included)
  s_neg         f2 . M[negs]   (negatives always scored with the generated view)
  L_vi   = CE([f  . M[pos_a], s_neg] / tau, 0)      eq. 5.6
  L'_vi  = CE([f2 . M[idx],   s_neg] / tau, 0)      eq. 5.7 as the code: the
           anchor's own memory slot (the thesis: f2 . f; `own_slot=False`)
  L''_vi = CE([f2 . M[pos_b], s_neg] / tau, 0)      eq. 5.8
  L_mem  = mean L_vi + mean L'_vi + mean L''_vi

then, without gradient, M[idx] <- normalise(alpha M[idx] + (1 - alpha) f),
alpha = 0.2, f the original view's train-mode feature.

Static shapes: the K negatives are the top K of uniform random scores over
the other-label slots (a uniform draw without replacement); when fewer than
K slots qualify, the missing ones are masked out of the softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

TAU = 0.04
NUM_NEGATIVES = 8192
MOMENTUM = 0.2


def draw(key: Array, labels: Array, anchor_labels: Array,
         num_negatives: int = NUM_NEGATIVES) -> dict[str, Array]:
  """The positive and negative memory slots of each anchor.

  Args:
    key: PRNG key.
    labels: (N,) int pseudo labels of the memory slots (-1 = outlier).
    anchor_labels: (B,) int labels of the anchors (>= 0).
    num_negatives: K (static).

  Returns:
    {'pos_a', 'pos_b': (B,) int32 slots of the anchor's label,
     'neg': (B, K') int32 slots of other labels, K' = min(K, N),
     'neg_mask': (B, K') bool, False where fewer than K' slots qualify}.
  """
  k_a, k_b, k_n = jax.random.split(key, 3)
  same = labels[None, :] == anchor_labels[:, None]           # (B, N)
  logits = jnp.where(same, 0.0, -jnp.inf)
  pos_a = jax.random.categorical(k_a, logits, axis=-1)
  pos_b = jax.random.categorical(k_b, logits, axis=-1)
  k = min(int(num_negatives), labels.shape[0])
  scores = jnp.where(same, -1.0, jax.random.uniform(k_n, same.shape))
  top, neg = jax.lax.top_k(scores, k)
  return {'pos_a': pos_a.astype(jnp.int32), 'pos_b': pos_b.astype(jnp.int32),
          'neg': neg.astype(jnp.int32), 'neg_mask': top >= 0.0}


def _ce_first(pos: Array, neg: Array, mask: Array, tau: float) -> Array:
  """Mean over anchors of CE([pos, neg] / tau, target 0); neg (B, K) with
  mask (B, K) False for absent negatives."""
  neg = jnp.where(mask, neg / tau, -jnp.inf)
  logits = jnp.concatenate([pos[:, None] / tau, neg], axis=1)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos / tau)


def losses(f: Array, f2: Array, memory: Array, idx: Array,
           slots: dict[str, Array], *, tau: float = TAU,
           own_slot: bool = True) -> dict[str, Array]:
  """{'vi', 'vi_prime', 'vi_second', 'total'} of one batch.

  Args:
    f: (B, D) unit original-view features.
    f2: (B, D) unit generated-view features.
    memory: (N, D) unit memory (a constant: no gradient flows into it).
    idx: (B,) memory slots of the anchors.
    slots: `draw`'s output.
    tau: temperature (0.04).
    own_slot: L'_vi's positive is M[idx] (the code) or f itself (eq. 5.7).
  """
  memory = jax.lax.stop_gradient(memory)
  hp = jax.lax.Precision.HIGHEST
  s_neg = jnp.einsum('bd,bkd->bk', f2, memory[slots['neg']], precision=hp)
  mask = slots['neg_mask']
  dot = lambda a, b: jnp.sum(a * b, axis=-1)
  own = memory[idx] if own_slot else f
  out = {'vi': _ce_first(dot(f, memory[slots['pos_a']]), s_neg, mask, tau),
         'vi_prime': _ce_first(dot(f2, own), s_neg, mask, tau),
         'vi_second': _ce_first(dot(f2, memory[slots['pos_b']]), s_neg, mask,
                                tau)}
  out['total'] = out['vi'] + out['vi_prime'] + out['vi_second']
  return out


def update(memory: Array, idx: Array, f: Array,
           alpha: float = MOMENTUM) -> Array:
  """M[idx] <- normalise(alpha M[idx] + (1 - alpha) f).

  Args:
    memory: (N, D) unit memory.
    idx: (B,) distinct slots (a batch of one pass over the images).
    f: (B, D) original-view features.
    alpha: weight of the old slot (0.2).
  """
  f = jax.lax.stop_gradient(f).astype(memory.dtype)
  new = alpha * memory[idx] + (1.0 - alpha) * f
  new = new / jnp.maximum(jnp.linalg.norm(new, axis=-1, keepdims=True),
                          1e-12)
  return memory.at[idx].set(new)

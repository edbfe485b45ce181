"""Unsupervised visible-infrared ReID: DCL, then MULT + AMIRL + OCLR.

spec_vi_mult.md. Phases (one compiled step each):

  0  stage 1, DCL (epochs < method.stage_one_epochs): per-modality Jaccard +
     DBSCAN, outliers dropped, memories M_v, M_r from the normalised centres;
     L = CE(z_Mv(v), y_v) + CE(z_Mv(v̂), y_v) + CE(z_Mr(r), y_r).
  1  stage 2, even epochs (the visible label space is shared), and
  2  stage 2, odd epochs (the infrared space), after MULT's label transfer
     (jreid.clustering.label_transfer.transfer): every record has a label
     and a soft target in both spaces; six memories from the DBSCAN centres;
     L = L_ms + L_ma + L_OCLR of §7.2.

A batch is P K visible records then P K infrared ones (vi_sampler); the
visible records give two views (v, and v̂ with channel exchange), the
infrared ones one (r): 3 P K images through the two-stream network
(jreid.models.vi_net), visible views first. Memories update after the
optimizer step, sample by sample in batch order v, v̂, r (§13: the
reference's reverse order is an artefact of its backward pass;
`method.memory_order='reference'` gives r, v̂, v).

Per record the state keeps its label in each space ('label_v', 'label_r':
-1 when it has none) and, in stage 2, its soft targets ('q_v' (N,
capacity_v), 'q_r' (N, capacity_r)); all padded, so the steps compile once.
"""

from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jreid import clustering
from jreid import memory
from jreid import models
from jreid import sharding
from jreid.clustering import camera_norm
from jreid.data import augment
from jreid.losses import vi as vi_losses
from jreid.methods import base
from jreid.methods import clustering_base
from jreid.methods import vi_sampler
from jreid.models import pretrained
from jreid.models import vi_net

BANKS = ('m_v', 'm_r', 'm_rv', 'm_vr', 'm_va', 'm_ra')
# Label space of each bank: 'v' visible clusters, 'r' infrared clusters.
SPACE = {'m_v': 'v', 'm_va': 'v', 'm_rv': 'v', 'm_r': 'r', 'm_ra': 'r',
         'm_vr': 'r'}


class MULT(clustering_base.ClusteringMethod):
  """DCL (stage 1) and MULT + AMIRL + OCLR (stage 2)."""

  batch_fields = ('label_v', 'label_r')

  @classmethod
  def records_per_step(cls, config):
    s = config.sampler
    return 2 * int(s.batch_size) * int(s.num_instances)

  def __init__(self, config, train):
    super().__init__(config, train)
    if 'modality' not in train.fields:
      raise ValueError(
          f'{config.method.name} trains on visible-infrared data: the train '
          "split needs a 'modality' field (0 visible, 1 infrared), as the "
          'sysu_mm01, regdb and synthetic_sysu / synthetic_regdb datasets '
          'give; this dataset has fields '
          f'{sorted(train.fields) or "none"}')
    self.modality = np.asarray(train.fields['modality'], np.int32)
    self.vis = np.flatnonzero(self.modality == 0)
    self.ir = np.flatnonzero(self.modality == 1)
    m = config.method
    self.cap = {'v': int(m.get('capacity_v', 0)) or memory.capacity_for(
        len(self.vis)), 'r': int(m.get('capacity_r', 0)) or
                memory.capacity_for(len(self.ir))}
    a = config.aug
    self.views = {k: augment.make_view(a[k], pad=a.get('pad'))
                  for k in ('visible', 'visible_exchange', 'infrared')}

  # ------------------------------------------------------------ construction
  def init_variables(self, key, image_size):
    """Both stems start as the same weights, as the reference's two copies
    of one ImageNet stem do: a random thermal stem unrelated to the visible
    one would leave the modalities' features with nothing in common, and
    the cross-modality transport would match noise."""
    h, w = image_size
    variables = self.model.init({'params': key},
                                jnp.zeros((2, h, w, 3), jnp.float32),
                                train=True, num_visible=1)
    out = {'params': dict(variables['params']),
           'batch_stats': dict(variables.get('batch_stats', {}))}
    for c in ('params', 'batch_stats'):
      if 'visible' in out[c]:
        out[c]['thermal'] = jax.tree.map(jnp.copy, out[c]['visible'])
    return out

  def load_pretrained(self, variables, path):
    return pretrained.load_pretrained_into(
        variables, path, arch=self.config.model.name,
        prefixes=vi_net.pretrained_prefixes())

  # ------------------------------------------------------------------- state
  def feature_dim(self):
    return models.feature_dim(self.config.model.name, self.config.model.width)

  def _empty_bank(self, space):
    return {'features': np.zeros((self.cap[space], self.feature_dim()),
                                 np.float32),
            'valid': np.zeros((self.cap[space],), bool)}

  def init_extra(self, variables, num_train):
    del variables
    return {
        'label_v': jnp.full((num_train,), -1, jnp.int32),
        'label_r': jnp.full((num_train,), -1, jnp.int32),
        'q_v': jnp.zeros((num_train, self.cap['v']), jnp.float32),
        'q_r': jnp.zeros((num_train, self.cap['r']), jnp.float32),
        'failed_refreshes': jnp.zeros((), jnp.int32),
        'memory': {b: jax.tree.map(jnp.asarray, self._empty_bank(SPACE[b]))
                   for b in BANKS}}

  def extra_shardings(self, mesh, extra):
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda _: rep, extra)

  # --------------------------------------------------------------- per epoch
  def stage_two(self, epoch: int) -> bool:
    return epoch >= int(self.config.method.stage_one_epochs)

  def phase(self, epoch):
    return 1 + epoch % 2 if self.stage_two(epoch) else 0

  def epoch_batches(self, state, epoch, num_batches):
    s = self.config.sampler
    label_v = np.asarray(jax.device_get(state.extra['label_v']))
    label_r = np.asarray(jax.device_get(state.extra['label_r']))
    sample = (vi_sampler.stage_two if self.stage_two(epoch)
              else vi_sampler.stage_one)
    index = sample(label_v, label_r, self.modality,
                   num_labels=s.batch_size, num_instances=s.num_instances,
                   seed=self.config.seed, epoch=epoch,
                   num_batches=num_batches or 1)
    return base.gather_fields(index, {'label_v': label_v,
                                      'label_r': label_r})

  def refresh(self, ctx, state, epoch):
    features = np.asarray(ctx.extract_train(self.eval_variables(state)))
    # The clustering and the label transfer may see camera-balanced
    # features (`method.camera_norm`, off in the paper presets); the
    # memories start from the centres of the features as extracted.
    balanced = camera_norm.camera_normalize(
        features, self.train.camids,
        self.config.method.get('camera_norm', 'none'))
    if self.stage_two(epoch):
      out = self._transfer(features, balanced, ctx)
    else:
      out = self._dcl_labels(features, balanced, ctx)
    if isinstance(out, str):  # a modality without usable clusters
      n = len(features)
      return self._keep_previous(state, epoch, {}, out, n)
    extra_host, info = out
    problem = self._sampler_problem_vi(extra_host, epoch)
    if problem:
      return self._keep_previous(state, epoch, info, problem, len(features))
    rep = sharding.replicated(ctx.mesh)
    extra = dict(state.extra)
    for k, v in extra_host.items():
      extra[k] = jax.tree.map(lambda x: sharding.put_global(x, rep), v)
    extra['failed_refreshes'] = jnp.zeros((), jnp.int32)
    shown = [k for k in info if k.endswith(('_num_clusters', '_num_outliers',
                                             '_nmi', '_ari'))
             or k.startswith('cross_acc')]
    logging.info('epoch %d refresh: %s', epoch, ', '.join(
        f'{k} {info[k]:.3g}' for k in shown))
    return state.replace(extra=extra), info

  def _sampler_problem_vi(self, extra_host, epoch):
    s = self.config.sampler
    sample = (vi_sampler.stage_two if self.stage_two(epoch)
              else vi_sampler.stage_one)
    try:
      sample(extra_host['label_v'], extra_host['label_r'], self.modality,
             num_labels=s.batch_size, num_instances=s.num_instances,
             seed=self.config.seed, epoch=epoch, num_batches=1)
    except ValueError as e:
      return str(e)
    return None

  def previous_usable(self, state, epoch):
    """The previous labels must make this epoch's batches (stage 2 needs
    cross-modality labels that a stage-1 refresh never set)."""
    previous = {k: np.asarray(jax.device_get(state.extra[k]))
                for k in ('label_v', 'label_r')}
    return self._sampler_problem_vi(previous, epoch) is None

  def _cluster_modality(self, feats, ctx, what):
    result = self.cluster(feats, ctx)
    labels = np.asarray(result.labels[0], np.int32)
    k = int(labels.max(initial=-1)) + 1
    return labels, k, result.timings

  def _check_fit(self, k, space, what):
    if k > self.cap[space]:
      raise clustering_base.ClusteringError(
          f'{k} {what} clusters exceed the memory capacity {self.cap[space]}; '
          f'set config.method.capacity_{space} higher')

  def _dcl_labels(self, features, balanced, ctx):
    info, labels = {}, {}
    for name, idx, space in (('visible', self.vis, 'v'),
                             ('infrared', self.ir, 'r')):
      lab, k, timings = self._cluster_modality(balanced[idx], ctx, name)
      if k < 1:
        return (f'the {name} modality has no cluster ({len(idx)} images, '
                f'all DBSCAN outliers)')
      self._check_fit(k, space, name)
      labels[space] = lab
      info.update(_stats(lab, self.train.pids[idx], name))
      info.update({f'seconds_{name}_{t}': v for t, v in timings.items()})
    n = len(features)
    label_v, label_r = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
    label_v[self.vis], label_r[self.ir] = labels['v'], labels['r']
    cv = memory.build_centroids(features[self.vis], labels['v'], self.cap['v'],
                                normalize=True)
    cr = memory.build_centroids(features[self.ir], labels['r'], self.cap['r'],
                                normalize=True)
    banks = {b: (cv if SPACE[b] == 'v' else cr) for b in BANKS}
    zeros = {'q_v': np.zeros((n, self.cap['v']), np.float32),
             'q_r': np.zeros((n, self.cap['r']), np.float32)}
    return {'label_v': label_v, 'label_r': label_r, 'memory': banks,
            **zeros}, info

  def _transfer(self, features, balanced, ctx):
    del ctx
    from jreid.clustering import label_transfer  # pylint: disable=g-import-not-at-top
    m = self.config.method
    try:
      res = label_transfer.transfer(
          balanced[self.vis], balanced[self.ir], k1=m.k1, k2=m.k2, eps=m.eps,
          min_samples=m.min_samples, alpha=m.alpha, beta=m.beta,
          temperature=m.label_temperature)
    except clustering_base.ClusteringError as e:
      return str(e)
    except ValueError as e:  # no cluster in a modality
      return str(e)
    kv, kr = res['q_rgb'].shape[1], res['q_ir'].shape[1]
    self._check_fit(kv, 'v', 'visible')
    self._check_fit(kr, 'r', 'infrared')
    n = len(features)
    label_v, label_r = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
    label_v[self.vis] = res['labels_rgb']
    label_v[self.ir] = res['cm_labels_ir']      # y_{r->v}
    label_r[self.ir] = res['labels_ir']
    label_r[self.vis] = res['cm_labels_rgb']    # y_{v->r}
    q_v = np.zeros((n, self.cap['v']), np.float32)
    q_r = np.zeros((n, self.cap['r']), np.float32)
    q_v[self.vis, :kv], q_v[self.ir, :kv] = res['q_rgb'], res['q_ir_cm']
    q_r[self.ir, :kr], q_r[self.vis, :kr] = res['q_ir'], res['q_rgb_cm']
    dv, dr = res['dbscan_rgb'], res['dbscan_ir']
    cv = memory.build_centroids(features[self.vis], dv, self.cap['v'],
                                normalize=True)
    cr = memory.build_centroids(features[self.ir], dr, self.cap['r'],
                                normalize=True)
    banks = {b: (cv if SPACE[b] == 'v' else cr) for b in BANKS}
    pids = self.train.pids
    info = {}
    info.update(_stats(dv, pids[self.vis], 'visible'))
    info.update(_stats(dr, pids[self.ir], 'infrared'))
    # How often the cross-modality label points at a cluster of the
    # record's own identity (majority id of the cluster's members).
    info['cross_acc_visible'] = _association_accuracy(
        res['cm_labels_rgb'], pids[self.vis], dr, pids[self.ir])
    info['cross_acc_infrared'] = _association_accuracy(
        res['cm_labels_ir'], pids[self.ir], dv, pids[self.vis])
    for k in ('sinkhorn_steps', 'lp_iters'):
      if k in res:
        for i, v in enumerate(np.ravel(res[k])):
          info[f'{k}_{i}'] = float(v)
    return {'label_v': label_v, 'label_r': label_r, 'q_v': q_v, 'q_r': q_r,
            'memory': banks}, info

  # ---------------------------------------------------------------- per step
  def _forward(self, params, state, images, key):
    """(f_v, f_vh, f_r, new batch stats) of a batch: P K visible then P K
    infrared uint8 images."""
    n = images.shape[0] // 2
    k1, k2, k3 = jax.random.split(key, 3)
    rgb, ir = images[:n], images[n:]
    x = jnp.concatenate([self.views['visible'](rgb, k1),
                         self.views['visible_exchange'](rgb, k2),
                         self.views['infrared'](ir, k3)], axis=0)
    out, upd = self.model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        num_visible=2 * n, mutable=['batch_stats'])
    f = vi_losses.normalize(out['feat'])
    return f[:n], f[n:2 * n], f[2 * n:], upd['batch_stats']

  def loss(self, params, state, images, batch, key, phase=0):
    m = self.config.method
    f_v, f_vh, f_r, stats = self._forward(params, state, images, key)
    n = f_v.shape[0]
    banks, tau = state.extra['memory'], m.temperature
    z = lambda bank, f: vi_losses.memory_logits(banks[bank], f, tau)
    yv, yr = batch['label_v'], batch['label_r']
    metrics = {}
    if phase == 0:
      loss = (vi_losses.hard_ce(z('m_v', f_v), yv[:n])
              + vi_losses.hard_ce(z('m_v', f_vh), yv[:n])
              + vi_losses.hard_ce(z('m_r', f_r), yr[n:]))
      metrics['loss_dcl'] = loss
    else:
      idx = jnp.maximum(batch['index'], 0)
      q_v, q_r = state.extra['q_v'][idx], state.extra['q_r'][idx]
      ce = vi_losses.soft_ce
      sce = lambda a, b: vi_losses.oclr(
          a, b, sharpen=m.oclr_sharpen, detach_target=m.oclr_detach)
      if phase == 1:  # visible label space shared
        qv, qrv, qr = q_v[:n], q_v[n:], q_r[n:]
        l_ms = (ce(z('m_v', f_v), qv) + ce(z('m_v', f_vh), qv)
                + ce(z('m_r', f_r), qr) + ce(z('m_rv', f_r), qrv))
        sv, svh, sr = z('m_va', f_v), z('m_va', f_vh), z('m_va', f_r)
        l_ma = ce(sv, qv) + ce(svh, qv) + ce(sr, qrv)
        intra, cross = 'm_v', 'm_rv'
      else:  # infrared label space shared
        qv, qvr, qr = q_v[:n], q_r[:n], q_r[n:]
        l_ms = (ce(z('m_v', f_v), qv) + ce(z('m_v', f_vh), qv)
                + ce(z('m_vr', f_v), qvr) + ce(z('m_vr', f_vh), qvr)
                + ce(z('m_r', f_r), qr))
        sv, svh, sr = z('m_ra', f_v), z('m_ra', f_vh), z('m_ra', f_r)
        l_ma = ce(sv, qvr) + ce(svh, qvr) + ce(sr, qr)
        intra, cross = 'm_vr', 'm_r'
      # Even: targets from M_v (v̂ for v, v for v̂) and M_{r->v} (r), then the
      # swapped pair; odd: M_{v->r} and M_r likewise (§7.2).
      l_oclr = (sce(sv, z(intra, f_vh)) + sce(svh, z(intra, f_v))
                + sce(sr, z(cross, f_r)) + sce(sv, z(cross, f_vh))
                + sce(svh, z(cross, f_v)) + sce(sr, z(intra, f_r)))
      loss = l_ms + l_ma + l_oclr
      metrics.update(loss_ms=l_ms, loss_ma=l_ma, loss_oclr=l_oclr)
    metrics['loss'] = loss
    feats = jax.lax.stop_gradient(jnp.concatenate([f_v, f_vh, f_r]))
    return loss, {'batch_stats': stats, 'metrics': metrics, 'feats': feats}

  def train_step(self, state, images, batch, key, phase):
    grads, aux = jax.grad(self.loss, has_aux=True)(
        state.params, state, images, batch, key, phase)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(params=params, opt_state=opt_state,
                        batch_stats=aux['batch_stats'])
    return self._update_memories(new, aux['feats'], batch, phase), \
        aux['metrics']

  def _update_memories(self, state, feats, batch, phase):
    """Sequential momentum updates, batch order v, v̂, r (§7.1)."""
    n = feats.shape[0] // 3
    yv, yr = batch['label_v'], batch['label_r']
    lab_v = jnp.concatenate([yv[:n], yv[:n], yv[n:]])   # y_v, y_v, y_{r->v}
    lab_r = jnp.concatenate([yr[:n], yr[:n], yr[n:]])   # y_{v->r}, .., y_r
    rgb = jnp.arange(3 * n) < 2 * n
    # Which samples update each bank, per phase.
    plan = {0: {'m_v': (lab_v, rgb), 'm_r': (lab_r, ~rgb)},
            1: {'m_v': (lab_v, rgb), 'm_r': (lab_r, ~rgb),
                'm_rv': (lab_v, ~rgb), 'm_va': (lab_v, None)},
            2: {'m_v': (lab_v, rgb), 'm_r': (lab_r, ~rgb),
                'm_vr': (lab_r, rgb), 'm_ra': (lab_r, None)}}[phase]
    order = jnp.arange(3 * n)
    if self.config.method.get('memory_order', 'batch') == 'reference':
      order = jnp.concatenate([jnp.arange(2 * n, 3 * n),
                               jnp.arange(n, 2 * n), jnp.arange(n)])
    banks = dict(state.extra['memory'])
    for name, (labels, mask) in plan.items():
      mask = jnp.ones(3 * n, bool) if mask is None else mask
      banks[name] = memory.update_sequential(
          banks[name], feats[order], labels[order],
          self.config.method.momentum, mask=mask[order])
    return state.replace(extra={**state.extra, 'memory': banks})

  # -------------------------------------------------------------------- test
  def eval_features(self, variables, x, fields):
    return self.model.apply(variables, x, train=False,
                            modality=fields['modality'])['feat']


def _stats(labels, pids, name):
  info = {f'{name}_{k}': v for k, v in
          clustering_base.cluster_size_stats(labels).items()
          if not k.startswith('clusters_of')}
  if int(labels.max(initial=-1)) >= 1 and np.any(pids >= 0):
    info.update({f'{name}_{k}': v for k, v in
                 clustering.label_quality(labels, pids).items()})
  return info


def _association_accuracy(cross_labels, pids, other_labels, other_pids):
  """Fraction of records whose cross-modality label is a cluster of the other
  modality whose most frequent true id is the record's own."""
  k = int(max(other_labels.max(initial=-1), cross_labels.max(initial=-1))) + 1
  majority = np.full(k, -2, np.int64)
  for c in np.unique(other_labels[other_labels >= 0]):
    ids, counts = np.unique(other_pids[other_labels == c], return_counts=True)
    majority[c] = ids[np.argmax(counts)]
  ok = (cross_labels >= 0) & (majority[np.maximum(cross_labels, 0)] == pids)
  return float(np.mean(ok))

"""GCL: joint generative and contrastive learning (thesis Ch. 5, spec_thesis.md §4).

Networks: the identity encoder E_id (models/gcl_identity.py), the generator
(structure encoder + AdaIN decoder, models/gcl_generator.py) and the 3-scale
PatchGAN D (models/gcl_discriminator.py); params {'identity', 'generator',
'discriminator'}, one optimizer each ('id', 'gen', 'dis').

Stages are chained runs (`config.method.stage`), as the reference:
  stage 2  E_id frozen in eval mode (gradients still flow through it into
           G); G and D learn with the GAN losses only; all images shuffled.
  stage 3  `config.init` = the stage-2 workdir; E_id trains too, with the
           instance memory's view-invariant losses on the pseudo-labelled
           images (outliers left out).
Stage 1 is any jreid unsupervised run; the stage-2 config takes its
backbone through `config.init` (`adapt_init`), the 512-d embedding starts
fresh when the source had none, and its BatchNorm statistics are then set
from the train images at the first refresh (`_calibrate_embedding`).

One step, from the uint8 batch x and structures s_ori, s_new (§4.7):
  p, f = E_id(x); x1 = G(s_o, p); x2 = G(s_n, p); p2, f2 = E_id(x2)
  x3 = G(s_o, p2); p1 = E_id(x1); p3 = E_id(x3)     (one forward, `_forward`)
  D   <- Adam(grad L_D(x; sg x1, x2, x3))               LSGAN + R1, first
  G, E_id <- Adam / SGD(grad L_G), through the updated D:
  L_G = adversarial + 5 L1(x1, x) + 5 L1(x3, x) + 5 L1(p1, sg p)
        + 5 L1(p3, sg p) [+ L_vi + L'_vi + L''_vi in stage 3]
The generator forward runs once: D's update reads its detached fakes, and
G's gradient is the forward's VJP of dL_G/d(outputs) (jax.vjp), so nothing
is recomputed. `method.feature_recon='thesis'` uses E_id(x2) for the first
feature term (eq. 5.2) instead of the code's E_id(x1).

`structure='off'` is the "contrast without generation" ablation: no G or
D, E_id on an augmented view, L_vi with negatives scored by that view.
"""

from __future__ import annotations

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jreid import optim
from jreid import sharding
from jreid.clustering import quality
from jreid.clustering import rho as rho_lib
from jreid.data import augment
from jreid.data import gcl_mesh
from jreid.data import gcl_structure
from jreid.data import images as images_lib
from jreid.losses import gan
from jreid.losses import view_invariant as vi
from jreid.methods import base
from jreid.methods import clustering_base
from jreid.methods import gcl_grid
from jreid.models import gcl_discriminator
from jreid.models import gcl_generator
from jreid.models import gcl_identity
from jreid.models import pretrained

PARTS = {'id': 'identity', 'gen': 'generator', 'dis': 'discriminator'}
STRUCTURES = ('mesh', 'proxy', 'off')


def l1(a, b):
  return jnp.mean(jnp.abs(a - b))


def unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class GCL(base.Method):
  """GCL stage 2 (generator warm-up) or stage 3 (joint), per config."""

  def __init__(self, config, train):
    super().__init__(config, train)
    m = config.method
    self.stage = int(m.stage)
    self.structure = m.structure
    if self.stage not in (2, 3):
      raise ValueError(f'config.method.stage={self.stage}: GCL runs stage 2 '
                       '(generator warm-up) or 3 (joint); stage 1 is any '
                       'unsupervised jreid run, given as config.init')
    if self.structure not in STRUCTURES:
      raise ValueError(f'config.method.structure={self.structure!r}; choose '
                       f'from {STRUCTURES}')
    if self.structure == 'off' and self.stage == 2:
      raise ValueError("config.method.structure='off' trains no generator: "
                       'it is a stage-3 ablation (set config.method.stage=3)')
    # .get: runs saved before the field existed had the reference's 'all'.
    self.bn_stats = m.get('bn_stats', 'all')
    if self.bn_stats not in ('all', 'real'):
      raise ValueError(f'config.method.bn_stats={self.bn_stats!r}; choose '
                       "'all' (the reference) or 'real'")
    # .get: likewise, runs before the field existed had the reference's.
    self.id_through_generator = bool(m.get('id_through_generator', True))
    if m.feature_recon not in ('code', 'thesis'):
      raise ValueError(f'config.method.feature_recon={m.feature_recon!r}; '
                       "choose 'code' or 'thesis'")
    self.joint = self.stage == 3
    self.generative = self.structure != 'off'
    self.view = augment.make_view(config.aug.train, pad=config.aug.get('pad'))
    self.groups = ((('id',) if self.joint else ())
                   + (('gen', 'dis') if self.generative else ()))
    n = len(train)
    self.grid_index = np.linspace(0, n - 1, min(int(m.grid_images), n)
                                  ).astype(np.int64)
    self._mesh_table = None
    self._grid = None

  # ------------------------------------------------------------ construction
  def build_models(self):
    c = self.config
    self.identity = gcl_identity.IdentityEncoder(
        arch=c.model.name, width=c.model.width, embed_dim=c.method.embed_dim,
        bn_group_size=c.model.get('bn_group_size', 0),
        dtype=jnp.dtype(c.model.get('dtype', 'float32')))
    self.generator = gcl_generator.Generator(
        aspp_dilations=tuple(c.method.aspp_dilations),
        # .get: runs saved before these fields existed (tools read their
        # config.json) had the networks' defaults.
        structure_res=c.method.get('structure_res', gcl_generator.NUM_RES),
        dim=c.method.get('gen_dim', gcl_generator.DIM),
        mlp_dim=c.method.get('gen_mlp_dim', gcl_generator.MLP_DIM))
    self.discriminator = gcl_discriminator.MultiScaleDiscriminator(
        num_res=c.method.get('dis_num_res', gcl_discriminator.NUM_RES),
        dim=c.method.get('dis_dim', gcl_discriminator.DIM))
    self.model = self.identity

  def init_variables(self, key, image_size):
    h, w = image_size
    k_id, k_gen, k_dis = jax.random.split(key, 3)
    x = jnp.zeros((1, h, w, 3), jnp.float32)
    ident = self.identity.init({'params': k_id}, x, train=False)
    params = {'identity': ident['params']}
    if self.generative:
      f_id = self.identity.apply(ident, x, train=False)['f_id']
      params['generator'] = self.generator.init(
          {'params': k_gen}, jnp.zeros((1, h, w, 1)), f_id)['params']
      params['discriminator'] = self.discriminator.init({'params': k_dis},
                                                        x)['params']
    return {'params': params,
            'batch_stats': {'identity': ident['batch_stats']}}

  def load_pretrained(self, variables, path):
    return pretrained.load_pretrained_into(
        variables, path, arch=self.config.model.name,
        prefixes=[('identity', 'backbone')])

  def adapt_init(self, init):
    """A stage-1 run's {'backbone': ...} goes under 'identity' (§4.9)."""
    if 'identity' in init['params'] or 'backbone' not in init['params']:
      return init
    return {c: {'identity': {'backbone': init[c].get('backbone', {})}}
            for c in ('params', 'batch_stats')}

  def make_optimizer(self, steps_per_epoch):
    txs, schedules = optim.make_optimizers(
        self.config.optim, steps_per_epoch,
        total_steps=self.config.num_epochs * steps_per_epoch)
    missing = [g for g in self.groups if g not in txs]
    if missing:
      raise ValueError(f'config.optim.groups lacks {missing}: GCL stage '
                       f'{self.stage} trains {list(self.groups)}')
    return ({g: txs[g] for g in self.groups},
            {g: schedules[g] for g in self.groups})

  def init_opt_state(self, params):
    return {g: self.tx[g].init(params[PARTS[g]]) for g in self.groups}

  # ------------------------------------------------------------------- state
  def init_extra(self, variables, num_train):
    if not self.joint:
      return {}
    return {'memory': jnp.zeros((num_train, self.config.method.embed_dim),
                                jnp.float32),
            'memory_ready': jnp.zeros((), bool),
            'labels': jnp.full((num_train,), -1, jnp.int32),
            'failed_refreshes': jnp.zeros((), jnp.int32)}

  def extra_tables(self):
    if self.structure != 'mesh':
      return {}
    return {'mesh': self.mesh_table()}

  def mesh_table(self) -> np.ndarray:
    """uint8 (N, H, W, 8) renders of the train records (loaded once)."""
    if self._mesh_table is None:
      m = self.config.method
      layout = m.get('mesh_layout', '') or gcl_mesh.default_layout(
          self.config.data.name)
      self._mesh_table = gcl_mesh.load_mesh_table(
          m.mesh_root, self.train.paths, tuple(self.config.data.image_size),
          layout=layout)
    return self._mesh_table

  # ----------------------------------------------------------------- refresh
  def refresh(self, ctx, state, epoch):
    state = self._calibrate_embedding(ctx, state)
    if not self.joint:
      return state, {}
    m = self.config.method
    extra = dict(state.extra)
    rep = sharding.replicated(ctx.mesh)
    if not bool(jax.device_get(extra['memory_ready'])):
      # M from E_id's eval-mode L2-normalised features (§4.8).
      feats = ctx.extract_train(self.eval_variables(state))
      extra['memory'] = sharding.put_global(feats.astype(np.float32), rep)
      extra['memory_ready'] = jnp.ones((), bool)
    memory = sharding.to_host(extra['memory'])
    labels, eps, timings = rho_lib.rho_labels(
        memory, k1=m.k1, k2=m.k2, rho=m.rho, min_samples=m.min_samples,
        mesh=ctx.mesh)
    labels = sharding.broadcast_from_host0(labels)
    info = clustering_base.cluster_size_stats(labels)
    info.update(eps=eps, **{f'seconds_{k}': v for k, v in timings.items()})
    if info['num_clusters'] >= 2 and np.any(self.train.pids >= 0):
      info.update(quality.label_quality(labels, self.train.pids))
    logging.info('epoch %d refresh: eps %.4f (rho %g), %d clusters, %d '
                 'outliers of %d%s', epoch, eps, m.rho, info['num_clusters'],
                 info['num_outliers'], len(labels),
                 f", NMI {info['nmi']:.3f}" if 'nmi' in info else '')
    batch = self.config.sampler.batch_size
    if info['num_clusters'] < 2 or (labels >= 0).sum() < batch:
      return self._keep_previous(state, extra, epoch, info, eps)
    extra['labels'] = sharding.put_global(labels, rep)
    extra['failed_refreshes'] = jnp.zeros((), jnp.int32)
    return state.replace(extra=extra), info

  def _calibrate_embedding(self, ctx, state):
    """Sets a never-trained embedding BN's running statistics from the data.

    The reference's stage 1 (JVTC) trains E_id's 512-d embedding and its
    BatchNorm; a jreid stage-1 run has neither, so both start fresh
    (`adapt_init`, spec §4.9) and, E_id being frozen in stage 2, the BN
    would reach stage 3 with its initial statistics (mean 0, var 1). Its
    eval-mode output would then be the raw linear projection of the
    post-ReLU pooled features, dominated by one common direction: the
    memory starts from those (and the test reads them), while the train-mode
    features written into it are batch-centred, so the memory losses compare
    two different spaces. (On the synthetic set they rose from ~4.5 to ~12 in
    the first 20 stage-3 steps and the test mAP fell from 20.6 to 13.7.)

    So a BN whose statistics are exactly the initial ones gets the
    population mean and (unbiased) variance of the linear outputs over the
    train images, with the frozen eval-mode backbone: in stage 2 at its
    first refresh, or in stage 3 before the memory is built from a run that
    had none (a stage-2 run from before this, or `structure='off'` from a
    backbone alone). Trained statistics are never touched.
    `config.method.calibrate_embedding=False` keeps the initial ones.
    """
    if not self.config.method.get('calibrate_embedding', True):
      return state
    stats = state.batch_stats['identity']
    bn = jax.device_get(stats['embed_bn'])
    if not (np.all(bn['mean'] == 0) and np.all(bn['var'] == 1)):
      return state

    def linear(variables, x, fields):
      del fields
      return self.identity.apply(
          {'params': variables['params']['identity'],
           'batch_stats': variables['batch_stats']['identity']},
          x, train=False)['embed_linear']

    if ctx.extract_train_raw is None:
      raise ValueError('GCL sets its new embedding BN from the train images: '
                       'build the RefreshContext with extract_train_raw (as '
                       'jreid.train does), or set '
                       'config.method.calibrate_embedding=False')
    out = ctx.extract_train_raw(linear, self.eval_variables(state))
    out = out.astype(np.float64)
    mean, var = out.mean(axis=0), out.var(axis=0, ddof=1)
    logging.info('embedding BN statistics set from %d train images (|mean| '
                 '%.3f, mean variance %.4f)', len(out), np.linalg.norm(mean),
                 var.mean())
    rep = sharding.replicated(ctx.mesh)
    new = {'mean': sharding.put_global(mean.astype(np.float32), rep),
           'var': sharding.put_global(var.astype(np.float32), rep)}
    stats = dict(stats, embed_bn=new)
    return state.replace(batch_stats=dict(state.batch_stats, identity=stats))

  def _keep_previous(self, state, extra, epoch, info, eps):
    m = self.config.method
    advice = (f"GCL epoch {epoch}: {info['num_clusters']} clusters, "
              f"{len(self.train) - info['num_outliers']} clustered images "
              f'(eps {eps:.4f} from rho={m.rho}, min_samples='
              f'{m.min_samples}); raise config.method.rho or start from a '
              'better stage-1 checkpoint')
    have = bool(np.any(np.asarray(jax.device_get(extra['labels'])) >= 0))
    extra = clustering_base.keep_previous_labels(
        extra, info, advice, have_previous=have,
        limit=int(m.max_failed_refreshes))
    return state.replace(extra=extra), info

  def sampler_labels(self, state):
    if not self.joint:  # stage 2: every image, shuffled
      return np.zeros(len(self.train), np.int32), self.train.camids
    return np.asarray(jax.device_get(state.extra['labels'])), self.train.camids

  # -------------------------------------------------------------------- step
  def _encode(self, id_params, stats, img):
    """E_id(img): train mode (stage 3, stats chained call to call, as the
    reference's 4 forwards update them in turn) or eval mode (stage 2)."""
    variables = {'params': id_params, 'batch_stats': stats}
    if not self.joint:
      return self.identity.apply(variables, img, train=False), stats
    out, upd = self.identity.apply(variables, img, train=True,
                                   mutable=['batch_stats'])
    return out, upd['batch_stats']

  def _forward(self, g_params, id_params, stats, x, s_ori, s_new):
    """The generative forward of §4.7: (outputs, new E_id batch stats).

    G and E_str normalise per sample (instance norm, AdaIN, DG-Net's
    LayerNorm), so calls on the same parameters share one batched call;
    E_id does too in eval mode (stage 2). In train mode (stage 3) its four
    calls stay separate: each has its own batch statistics, as in the
    reference, and each updates the running statistics in turn
    (`bn_stats='all'`); `bn_stats='real'` keeps only the real batch's
    update, so that the test-time statistics are those of real images.

    `id_through_generator=False` (stage 3): the identity codes that G
    decodes, E_id(x) and E_id(x2), are constants for E_id's weights, so
    that the terms on G's images (adversarial, image and cycle
    reconstruction) reach E_id only where E_id reads an image: L_feat
    through E_id(x1), E_id(x3) and the memory losses. G's gradients are
    unchanged (x2 still feeds x3 through E_id(x2)).
    """
    gen = lambda method, *a: self.generator.apply({'params': g_params}, *a,
                                                  method=method)
    two = lambda a, b: jnp.concatenate([a, b], axis=0)
    halves = lambda t: jnp.split(t, 2, axis=0)
    cut = self.joint and not self.id_through_generator
    e0, stats = self._encode(id_params, stats, x)
    p0 = jax.lax.stop_gradient(e0['f_id']) if cut else e0['f_id']
    code_o, code_n = halves(gen(gcl_generator.Generator.encode,
                                two(s_ori, s_new)))
    x1, x2 = halves(gen(gcl_generator.Generator.decode, two(code_o, code_n),
                        two(p0, p0)))
    if self.joint:
      real_stats = stats
      e1, stats = self._encode(id_params, stats, x1)
      stats_before_x2 = stats
      e2, stats = self._encode(id_params, stats, x2)
    else:
      e12, stats = self._encode(id_params, stats, two(x1, x2))
      e1 = jax.tree.map(lambda v: halves(v)[0], e12)
      e2 = jax.tree.map(lambda v: halves(v)[1], e12)
    p2 = e2['f_id']
    if cut:  # E_id(x2) again on constant weights (same batch statistics)
      p2 = self._encode(jax.lax.stop_gradient(id_params), stats_before_x2,
                        x2)[0]['f_id']
    x3 = gen(gcl_generator.Generator.decode, code_o, p2)
    e3, stats = self._encode(id_params, stats, x3)
    if self.joint and self.bn_stats == 'real':
      stats = real_stats  # the generated batches normalise, but not record
    return ({'x1': x1, 'x2': x2, 'x3': x3, 'p': e0['f_id'], 'p1': e1['f_id'],
             'p2': e2['f_id'], 'p3': e3['f_id'], 'f': e0['embedding'],
             'f2': e2['embedding']}, stats)

  def structures(self, images, key):
    """(s_ori, s_new) float32 (B, H, W, 1) of the batch."""
    if self.structure == 'mesh':
      s_o, s_n, _ = gcl_structure.mesh_pair(
          images['mesh'], key,
          all_angles=self.config.method.mesh_all_angles)
      return s_o, s_n
    return gcl_structure.proxy_pair(images['image'] if isinstance(images, dict)
                                    else images)

  def _d_apply(self, d_params):
    return lambda img: self.discriminator.apply({'params': d_params}, img)

  def _update(self, group, grads, state, params):
    updates, opt = self.tx[group].update(grads, state.opt_state[group],
                                         params[PARTS[group]])
    params[PARTS[group]] = optax.apply_updates(params[PARTS[group]], updates)
    return opt

  def memory_losses(self, f, f2, state, batch, key):
    """L_mem of §4.8 (f, f2 un-normalised): {'vi', 'vi_prime', ...}."""
    m = self.config.method
    slots = vi.draw(key, state.extra['labels'], batch['label'],
                    m.num_negatives)
    return vi.losses(unit(f), unit(f2), state.extra['memory'], batch['index'],
                     slots, tau=m.temperature, own_slot=m.own_slot)

  def train_step(self, state, images, batch, key, phase):
    del phase  # one phase per run: the stage is config.method.stage
    if not self.generative:
      return self._contrast_step(state, images, batch, key)
    m = self.config.method
    k_view, k_struct, k_draw = jax.random.split(key, 3)
    raw = images['image'] if isinstance(images, dict) else images
    x = self.view(raw, k_view)
    s_ori, s_new = self.structures(images, k_struct)
    params = dict(state.params)
    stats = state.batch_stats['identity']
    forward = functools.partial(self._forward, stats=stats, x=x, s_ori=s_ori,
                                s_new=s_new)
    if self.joint:
      outs, vjp_fn, stats = jax.vjp(forward, params['generator'],
                                    params['identity'], has_aux=True)
    else:  # E_id is a constant: no gradient w.r.t. its weights
      outs, vjp_fn, stats = jax.vjp(
          lambda g: forward(g, params['identity']), params['generator'],
          has_aux=True)
    fakes = [outs['x1'], outs['x2'], outs['x3']]
    opt_state = dict(state.opt_state)
    # 1) D first, on the detached fakes.
    d_loss, d_grads = jax.value_and_grad(
        lambda dp: gan.gcl_d_loss(self._d_apply(dp), x, fakes,
                                  r1_weight=m.r1_weight,
                                  gan_weight=m.gan_weight))(
                                      params['discriminator'])
    opt_state['dis'] = self._update('dis', d_grads, state, params)
    d_new = self._d_apply(params['discriminator'])

    # 2) G (+ E_id) through the updated D.
    def g_loss(o):
      sg = jax.lax.stop_gradient
      p_first = o['p1'] if m.feature_recon == 'code' else o['p2']
      terms = {
          'loss_adv': gan.gcl_g_loss(d_new, [o['x1'], o['x2'], o['x3']],
                                     gan_weight=m.gan_weight),
          'loss_recon_x': m.recon_x_weight * l1(o['x1'], x),
          'loss_recon_cycle': m.recon_cycle_weight * l1(o['x3'], x),
          'loss_recon_f': m.recon_f_weight * (l1(p_first, sg(o['p']))
                                              + l1(o['p3'], sg(o['p'])))}
      if self.joint:
        mem = self.memory_losses(o['f'], o['f2'], state, batch, k_draw)
        terms.update({f'loss_{k}': m.memory_weight * v
                      for k, v in mem.items() if k != 'total'})
      return sum(terms.values()), terms

    (loss, terms), cotangent = jax.value_and_grad(g_loss, has_aux=True)(outs)
    grads = vjp_fn(cotangent)
    opt_state['gen'] = self._update('gen', grads[0], state, params)
    extra = state.extra
    if self.joint:
      opt_state['id'] = self._update('id', grads[1], state, params)
      extra = self._memory_update(state, batch, outs['f'])
    metrics = dict(terms, loss=loss, loss_d=d_loss,
                   recon_l1=l1(outs['x1'], x), cycle_l1=l1(outs['x3'], x))
    new = state.replace(params=params, opt_state=opt_state,
                        batch_stats={'identity': stats}, extra=extra)
    return new, metrics

  def _memory_update(self, state, batch, f):
    extra = dict(state.extra)
    memory = extra['memory']
    # A padding slot (-1) points past the end: its write is dropped.
    idx = jnp.where(batch['index'] >= 0, batch['index'], memory.shape[0])
    extra['memory'] = vi.update(memory, idx, unit(f),
                                self.config.method.memory_momentum)
    return extra

  def _contrast_step(self, state, images, batch, key):
    """structure='off': L_vi on an augmented view, no generation (Table 5.3)."""
    m = self.config.method
    k_view, k_draw = jax.random.split(key)
    raw = images['image'] if isinstance(images, dict) else images
    x = self.view(raw, k_view)

    def loss_fn(id_params):
      out, stats = self._encode(id_params, state.batch_stats['identity'], x)
      mem = self.memory_losses(out['embedding'], out['embedding'], state,
                               batch, k_draw)
      return m.memory_weight * mem['vi'], (stats, out['embedding'])

    (loss, (stats, f)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params['identity'])
    params = dict(state.params)
    opt_state = dict(state.opt_state)
    opt_state['id'] = self._update('id', grads, state, params)
    new = state.replace(params=params, opt_state=opt_state,
                        batch_stats={'identity': stats},
                        extra=self._memory_update(state, batch, f))
    return new, {'loss': loss, 'loss_vi': loss}

  # -------------------------------------------------------------------- test
  def eval_variables(self, state):
    return {'params': {'identity': state.params['identity']},
            'batch_stats': {'identity': state.batch_stats['identity']}}

  def eval_features(self, variables, x, fields):
    del fields
    return self.identity.apply(
        {'params': variables['params']['identity'],
         'batch_stats': variables['batch_stats']['identity']},
        x, train=False)['embedding']

  # ------------------------------------------------------------------ images
  def images(self, state) -> dict[str, np.ndarray]:
    """{'gcl/grid': uint8 (k H, 7 W, 3)}: the fixed grid images' real,
    structure, reconstruction, 3 novel views and cycle (gcl_grid.py)."""
    if not self.generative:
      return {}
    if self._grid is None:
      self._grid = gcl_grid.Grid(self)
    return {'gcl/grid': self._grid(state)}

  def grid_inputs(self) -> dict[str, np.ndarray]:
    """uint8 images (k, H, W, 3) and, with meshes, renders (k, H, W, 8)."""
    size = tuple(self.config.data.image_size)
    out = {'image': np.stack([images_lib.decode(self.train.paths[i], size)
                              for i in self.grid_index])}
    if self.structure == 'mesh':
      out['mesh'] = self.mesh_table()[self.grid_index]
    return out

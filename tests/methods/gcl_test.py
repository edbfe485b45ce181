"""GCL as a method: the step's order and gradients, stages, memory, resume.

The networks and losses are checked against numpy transcriptions in
tests/models/gcl_*_test.py and tests/losses/{gan,view_invariant}_test.py;
here, how the method composes them: D first on detached fakes, G and E_id
through the updated D, one forward (jax.vjp) equal to differentiating the
whole loss directly; stage 2 freezing E_id; the memory; the loop.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jreid import metrics_io
from jreid import sharding
from jreid import train
from jreid import train_step
from jreid.clustering import rho
from jreid.data import augment
from jreid.data import gcl_structure
from jreid.losses import gan
from jreid.losses import view_invariant as vi
from jreid.methods import gcl
from jreid.methods import clustering_base
from jreid_configs import common
from jreid_configs import gcl as gcl_config
import methods_testlib
import train_testlib


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def tiny(root, stage=2, structure='proxy', **overrides):
  """The runlocal preset at 32x16, 2 epochs x 2 steps, loose clustering,
  one residual block in E_str and per D scale."""
  c = gcl_config.get_config(f'stage={stage},structure={structure},runlocal')
  c.data.root = root
  c.data.kwargs = methods_testlib.TINY_DATA
  train_testlib.shrink(c)
  c.num_epochs, c.steps_per_epoch, c.evals.every_epochs = 2, 2, 2
  # One residual block in E_str and in each D scale instead of 4: the step
  # compiles ~25% faster; the blocks are tested in tests/models/gcl_*.
  c.method.update(num_negatives=20, rho=0.05, k1=10, min_samples=2,
                  grid_images=3, structure_res=1, dis_num_res=1)
  c.image_every_steps = 2
  return common.override(c, **overrides)


def _losses(workdir, key='loss'):
  return [r[key] for r in metrics_io.read_jsonl(workdir + '/metrics.jsonl')
          if key in r]


# With SGD, as methods_testlib.device_curves runs: this run is also the
# 1-device half of test_stage2_losses_equal_on_1_and_8_devices.
STAGE2_OPTIM = {'optim.name': 'sgd'}


@pytest.fixture(scope='module')
def stage2(root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('stage2'))
  return workdir, train.train_and_evaluate(tiny(root, **STAGE2_OPTIM), workdir)


# Stage 3 as the step-vs-reference test needs it: SGD (Adam's first step is
# ~lr sign(g), which turns the rounding of a near-zero gradient into a
# visible difference) and a large D step, 0.1 (so that G's loss through the
# old D differs: by 45% here; 0.5 overflows by step 4). The resume test
# trains it in full and the 1-vs-8 test compares its first step, so one
# compilation of the loop's step serves all three (the step test calls the
# loop's StepFn on the same shapes: a persistent-cache hit).
def tiny3(root, stage2_dir, **overrides):
  # bn_stats and id_through_generator: the reference's 'all' and True (the
  # synthetic preset's 'real' and False are the other branches of the same
  # code, tested with stubs below).
  c = tiny(root, stage=3, init=stage2_dir,
           **{'optim.name': 'sgd', 'method.bn_stats': 'all',
              'method.id_through_generator': True}, **overrides)
  c.optim.groups.dis.lr = 0.1
  return c


@pytest.fixture(scope='module')
def stage3(root, stage2, tmp_path_factory):
  """The full stage-3 run: (workdir, summary, the first rho_labels result)."""
  calls = []
  real = rho.rho_labels

  def record(features, **kwargs):
    calls.append(real(features, **kwargs))
    return calls[-1]

  workdir = str(tmp_path_factory.mktemp('stage3'))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(gcl.rho_lib, 'rho_labels', record)
    out = train.train_and_evaluate(tiny3(root, stage2[0]), workdir)
  return workdir, out, calls[0]


def _flat(tree):
  return jax.tree.leaves(jax.device_get(tree))


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(_flat(a), _flat(b)))


def test_stage2_trains_generator_and_discriminator_only(root, stage2,
                                                        tmp_path):
  workdir, result = stage2
  assert result['train_step_traces'] == 1
  c = tiny(root, **STAGE2_OPTIM)
  init = methods_testlib.loop_state(c, str(tmp_path / 'init'))[3]
  _, data, method, done, _, _ = methods_testlib.loop_state(c, workdir)
  assert int(done.step) == 4
  assert _same(init.params['identity'], done.params['identity'])
  stats0, stats = init.batch_stats['identity'], done.batch_stats['identity']
  assert _same(stats0['backbone'], stats['backbone'])  # eval mode throughout
  # The new embedding's BN: initial statistics (0, 1) replaced at the first
  # refresh by the train images' own, from the frozen eval-mode E_id.
  np.testing.assert_array_equal(stats0['embed_bn']['mean'], 0)
  np.testing.assert_array_equal(stats0['embed_bn']['var'], 1)
  images = np.asarray(data.images.array)[data.rows]
  linear = np.asarray(jax.jit(lambda v, x: method.identity.apply(
      v, augment.normalize(x), train=False)['embed_linear'])(
          {'params': done.params['identity'], 'batch_stats': stats}, images),
                      np.float64)
  np.testing.assert_allclose(stats['embed_bn']['mean'], linear.mean(0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats['embed_bn']['var'], linear.var(0, ddof=1),
                             rtol=1e-3)
  for part in ('generator', 'discriminator'):
    assert not _same(init.params[part], done.params[part])
  assert set(done.opt_state) == {'gen', 'dis'} and done.extra == {}
  # The grid: 3 images x (real, structure, recon, 3 novel views, cycle).
  grids = sorted(pathlib.Path(workdir).glob('images/gcl_grid_*.png'))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  assert [g.name for g in grids] == ['gcl_grid_0000002.png',
                                     'gcl_grid_0000004.png']
  assert np.asarray(Image.open(grids[0])).shape == (3 * 32, 7 * 16, 3)
  recon = _losses(workdir, 'recon_l1')
  assert len(recon) == 4 and np.all(np.isfinite(recon))


def _reference_step(method, state, images, batch, key, d_first=True):
  """The step differentiated directly: no vjp, no shared structure code."""
  m = method.config.method
  _, _, k_draw = jax.random.split(key, 3)
  x = augment.normalize(images)
  s_o, s_n = gcl_structure.proxy_pair(images)
  params = state.params

  def forward(gp, ip):
    stats = state.batch_stats['identity']

    def enc(img):
      nonlocal stats
      out, upd = method.identity.apply({'params': ip, 'batch_stats': stats},
                                       img, train=True, mutable=['batch_stats'])
      stats = upd['batch_stats']
      return out

    g = lambda s, f: method.generator.apply({'params': gp}, s, f)
    e0 = enc(x)
    real = stats  # after the real batch: what bn_stats='real' keeps
    x1, x2 = g(s_o, e0['f_id']), g(s_n, e0['f_id'])
    e1, e2 = enc(x1), enc(x2)
    x3 = g(s_o, e2['f_id'])
    e3 = enc(x3)
    return (x1, x2, x3, e0, e1, e2, e3), (real if m.bn_stats == 'real'
                                          else stats)

  d = lambda dp: lambda img: method.discriminator.apply({'params': dp}, img)
  (x1, x2, x3, *_), _ = forward(params['generator'], params['identity'])
  d_grads = jax.grad(lambda dp: gan.gcl_d_loss(d(dp), x, [x1, x2, x3]))(
      params['discriminator'])
  upd, dis_opt = method.tx['dis'].update(d_grads, state.opt_state['dis'],
                                         params['discriminator'])
  d_new = optax.apply_updates(params['discriminator'], upd)
  # d_first is traced: both variants share one compilation.
  d_used = jax.tree.map(lambda a, b: jnp.where(d_first, a, b), d_new,
                        params['discriminator'])

  def total(gp, ip):
    (x1, x2, x3, e0, e1, e2, e3), stats = forward(gp, ip)
    p = jax.lax.stop_gradient(e0['f_id'])
    f, f2 = gcl.unit(e0['embedding']), gcl.unit(e2['embedding'])
    slots = vi.draw(k_draw, state.extra['labels'], batch['label'],
                    m.num_negatives)
    mem = vi.losses(f, f2, state.extra['memory'], batch['index'], slots,
                    tau=m.temperature)['total']
    loss = (gan.gcl_g_loss(d(d_used), [x1, x2, x3])
            + 5 * jnp.mean(jnp.abs(x1 - x)) + 5 * jnp.mean(jnp.abs(x3 - x))
            + 5 * jnp.mean(jnp.abs(e1['f_id'] - p))
            + 5 * jnp.mean(jnp.abs(e3['f_id'] - p)) + mem)
    return loss, (stats, f)

  (loss, (stats, f)), (g_gen, g_id) = jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True)(params['generator'],
                                           params['identity'])
  out = {'discriminator': d_new}
  for group, part, grads in (('gen', 'generator', g_gen),
                             ('id', 'identity', g_id)):
    upd, _ = method.tx[group].update(grads, state.opt_state[group],
                                     params[part])
    out[part] = optax.apply_updates(params[part], upd)
  memory = vi.update(state.extra['memory'], batch['index'], f, 0.2)
  return loss, out, stats, memory


def test_stage3_step_equals_the_loss_differentiated_directly(root, stage2,
                                                             stage3, tmp_path):
  del stage3  # compiled the loop's step for this config first (any order works)
  c = tiny3(root, stage2[0])
  mesh, data, method, state, shardings, ctx = methods_testlib.loop_state(
      c, str(tmp_path / 'run'))
  bn = jax.device_get(state.batch_stats['identity']['embed_bn'])
  state, info = method.refresh(ctx, state, 0)
  assert info['num_clusters'] >= 2 and bool(state.extra['memory_ready'])
  # Statistics set in stage 2 are kept (only initial ones are replaced).
  assert _same(bn, state.batch_stats['identity']['embed_bn'])
  assert np.all(bn['var'] != 1)
  state = jax.device_put(state, shardings)  # as the loop does
  # The memory starts as E_id's eval-mode unit features.
  np.testing.assert_allclose(np.linalg.norm(state.extra['memory'], axis=1),
                             1.0, rtol=1e-5)
  batches = method.epoch_batches(state, 0, c.steps_per_epoch)
  labels = np.asarray(state.extra['labels'])
  assert np.all(labels[batches['index'][0]] >= 0)  # outliers left out
  batch = {k: jnp.asarray(v[0]) for k, v in batches.items()}
  table = np.asarray(data.images.array)
  images = jnp.asarray(table[data.rows[batches['index'][0]]])
  key = jax.random.fold_in(state.key, state.step)  # the loop's step key
  old_params = jax.device_get(state.params)
  reference = jax.jit(functools.partial(_reference_step, method))
  loss, want, stats, memory = reference(state, images, batch, key, True)
  old_loss = reference(state, images, batch, key, False)[0]
  # The loop's own jitted step (it donates the state: the reference first).
  data.epoch(batches, method.batch_fields, start=0)
  new, metrics = train_step.StepFn(method, data, shardings, mesh)(
      state, *data.device_batch(0))
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  # Each leaf's update (new - old) against the reference's, in norm: the
  # two differentiate in different orders, and through D's large step the
  # rounding reaches E_id's first BatchNorm at ~1-3% of its update on some
  # machines (elementwise it passed at 2e-4 on others). A missing or extra
  # term moves an update far more (G through the old D: 45% of the loss).
  for part in ('identity', 'generator', 'discriminator'):
    got_leaves = jax.tree_util.tree_leaves_with_path(
        jax.device_get(new.params[part]))
    for (path, got), exp, old in zip(got_leaves, _flat(want[part]),
                                     _flat(old_params[part])):
      d_got, d_exp = np.asarray(got) - old, np.asarray(exp) - old
      err = np.linalg.norm(d_got - d_exp)
      assert err <= 0.05 * np.linalg.norm(d_exp) + 1e-6, (
          part, jax.tree_util.keystr(path), err, np.linalg.norm(d_exp))
  for got, exp in zip(_flat(new.batch_stats['identity']), _flat(stats)):
    # Running statistics: rounding of the forward, ~1e-4 at most.
    np.testing.assert_allclose(got, exp, rtol=2e-4, atol=2e-6)
  np.testing.assert_allclose(new.extra['memory'], memory, rtol=1e-5,
                             atol=1e-6)
  # G's loss is through the updated D: through the old one it is another.
  assert abs(float(old_loss) - float(loss)) > 1e-3 * abs(float(loss))


def test_stage3_one_trace_exact_resume_and_memory(root, stage2, stage3,
                                                  tmp_path):
  full, a, _ = stage3
  split = str(tmp_path / 'split')
  assert a['train_step_traces'] == 1
  names = metrics_io.read_jsonl(full + '/metrics.jsonl')
  assert any('refresh/eps' in r for r in names)
  # Stopped mid-epoch 1 (after its refresh), then the same command resumes.
  train.train_and_evaluate(
      tiny3(root, stage2[0], stop_after_step=3), split)
  b = train.train_and_evaluate(tiny3(root, stage2[0]), split)
  np.testing.assert_array_equal(_losses(full), _losses(split))
  np.testing.assert_array_equal(_losses(full, 'loss_d'),
                                _losses(split, 'loss_d'))
  assert a['mAP'] == b['mAP']
  c = tiny3(root, stage2[0])
  sa = methods_testlib.loop_state(c, full)[3]
  sb = methods_testlib.loop_state(c, split)[3]
  assert set(sa.opt_state) == {'id', 'gen', 'dis'}
  for part in ('params', 'batch_stats', 'opt_state', 'extra'):
    assert _same(getattr(sa, part), getattr(sb, part)), part
  # Every trained slot stays a unit vector.
  np.testing.assert_allclose(np.linalg.norm(sa.extra['memory'], axis=1),
                             1.0, rtol=1e-5)


def test_stage2_losses_equal_on_1_and_8_devices(root, stage2, tmp_path):
  one = _losses(stage2[0])  # the same config on 1 device
  eight, = methods_testlib.device_curves(  # stopped before the evaluation
      lambda **o: tiny(root, stop_after_step=4, **o), tmp_path, devices=(8,))
  assert len(one) == 4
  np.testing.assert_allclose(one, eight, rtol=2e-4)


def test_stage3_losses_equal_on_1_and_8_devices(root, stage2, stage3,
                                                tmp_path, monkeypatch):
  """Step 1 of stage 3 (every loss, D updated first) on 1 and 8 devices.

  The 1-device run is the `stage3` fixture's; the 8-device run stops after
  its first step.

  Later steps are not compared at this scale, because they are ill-conditioned
  here: the 4-step stage-2 generator draws nearly the same noise for every
  image, and E_id's train-mode BatchNorm over those fakes (2 x 1 positions
  in layer4 at 32x16) divides by a near-zero batch variance. The E_id update
  of step 1 then differs by 3-7% between ANY two mesh sizes (1, 2, 4 and 8
  devices measured pairwise), and by 3% on one device when the variance is
  computed in two passes instead of one: rounding amplified, not a sharding
  error. The same terms on real images (recon_x alone) agree to 3e-5.

  The clustering is replayed, not re-run, on 8 devices for the same reason
  at a smaller scale: the memory's features differ by rounding across meshes
  (4e-8 here), and the rho rule's eps, a mean over near-tied k-reciprocal
  pairs, moves 0.2% with them (18 vs 17 clusters). On identical features the
  clustering is mesh-independent (test_rho_labels_do_not_depend_on_the_mesh).
  """
  full, _, first_labels = stage3
  calls = []

  def replay(features, **kwargs):
    calls.append(kwargs)
    return first_labels  # the 1-device run's labels

  monkeypatch.setattr(gcl.rho_lib, 'rho_labels', replay)
  eight = str(tmp_path / 'devices8')
  out = train.train_and_evaluate(
      tiny3(root, stage2[0], stop_after_step=1, **{'mesh.num_devices': 8}),
      eight)
  assert out['stopped_at_step'] == 1 and len(calls) == 1
  one = _losses(full)[:1]
  assert len(_losses(eight)) == 1
  np.testing.assert_allclose(one, _losses(eight), rtol=2e-4)


def test_rho_labels_do_not_depend_on_the_mesh(stage2):
  del stage2
  rng = np.random.default_rng(3)
  centers = rng.normal(size=(12, 32))
  x = centers.repeat(10, axis=0) + 0.6 * rng.normal(size=(120, 32))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  mesh = sharding.make_mesh(8)
  a = rho.rho_labels(x, k1=10, rho=0.05, min_samples=2)
  b = rho.rho_labels(x, k1=10, rho=0.05, min_samples=2, mesh=mesh)
  assert a[1] == b[1]
  np.testing.assert_array_equal(a[0], b[0])
  assert a[0].max() >= 5


def _write_renders(root, paths, size=(32, 16), missing=None):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for angle in (0, 45, 90, 135, 180, 225, 270, 315):
    if angle == missing:
      continue
    folder = os.path.join(root, 'train', 'render' + (f'_{angle}' if angle
                                                      else ''))
    os.makedirs(folder, exist_ok=True)
    for p in paths:
      Image.fromarray(rng.integers(0, 256, size, np.uint8)).save(
          os.path.join(folder, os.path.basename(p)), format='PNG')


def test_mesh_source_end_to_end_and_missing_angle(root, tmp_path):
  c = tiny(root, **{'method.structure': 'mesh',
                    'method.mesh_root': str(tmp_path / 'meshes')})
  c.num_epochs, c.image_every_steps = 1, 2
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  paths = pipeline.load_dataset(c).train.paths
  _write_renders(str(tmp_path / 'meshes'), paths)
  out = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert out['train_step_traces'] == 1
  assert (tmp_path / 'run' / 'images' / 'gcl_grid_0000002.png').exists()
  _write_renders(str(tmp_path / 'partial'), paths, missing=90)
  c.method.mesh_root = str(tmp_path / 'partial')
  with pytest.raises(FileNotFoundError,
                     match=str(tmp_path / 'partial' / 'train' / 'render_90')):
    train.train_and_evaluate(c, str(tmp_path / 'run2'))


def test_mesh_pair_draws_the_codes_angles():
  rows = np.stack([np.full((4, 2), 10 * a, np.uint8) for a in range(8)],
                  axis=-1)[None].repeat(64, axis=0)
  s_o, s_n, angle = gcl_structure.mesh_pair(jnp.asarray(rows),
                                            jax.random.key(0))
  assert set(np.asarray(angle)) == set(range(1, 7))  # 315 never (randint)
  np.testing.assert_allclose(s_o, 0.0 / 255 * 2 - 1)
  np.testing.assert_allclose(s_n[:, 0, 0, 0],
                             np.asarray(angle) * 10 / 255.0 * 2 - 1, rtol=1e-6)
  _, _, every = gcl_structure.mesh_pair(jnp.asarray(rows), jax.random.key(0),
                                        all_angles=True)
  assert set(np.asarray(every)) == set(range(1, 8))


def test_proxy_structure_against_numpy():
  img = np.random.default_rng(1).integers(0, 256, (2, 12, 7, 3), np.uint8)
  y = img.astype(np.float64) / 255 @ np.asarray([0.299, 0.587, 0.114])

  def corr(a, k):
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode='edge')
    return sum(k[i, j] * p[:, i:i + a.shape[1], j:j + a.shape[2]]
               for i in range(3) for j in range(3))

  blur = corr(y, np.outer([1, 2, 1], [1, 2, 1]) / 16)
  sx = np.asarray([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
  mag = np.hypot(corr(blur, sx), corr(blur, sx.T))
  want = 2 * mag / mag.max(axis=(1, 2), keepdims=True) - 1
  s_o, s_n = gcl_structure.proxy_pair(jnp.asarray(img))
  np.testing.assert_allclose(s_o[..., 0], want, atol=1e-5)
  np.testing.assert_array_equal(s_n, s_o[:, :, ::-1])


def test_rho_labels_match_the_dense_recipe():
  from sklearn.cluster import DBSCAN  # pylint: disable=g-import-not-at-top
  from jreid.clustering import jaccard  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(8, 16))
  x = centres[rng.integers(0, 8, 120)] + 0.3 * rng.normal(size=(120, 16))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  for r in (0.002, 0.01, 0.03):
    labels, eps, _ = rho.rho_labels(x, k1=10, k2=4, rho=r, min_samples=4)
    dense = np.asarray(jaccard.jaccard_distance(x, k1=10, k2=4),
                       np.float32)
    upper = dense[np.triu_indices(len(x), 1)]
    nonzero = np.sort(upper[upper != 0])
    want = float(nonzero[:int(np.round(r * len(nonzero)))].mean())
    assert eps == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(
        labels, DBSCAN(eps=eps, min_samples=4,
                       metric='precomputed').fit_predict(dense))


def test_config_errors_and_stage1_init(root):
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  c = tiny(root)
  split = pipeline.load_dataset(c).train
  for field, value, match in (('stage', 1, 'stage 2'),
                              ('structure', 'smpl', 'choose from'),
                              ('feature_recon', 'eq', 'code')):
    bad = tiny(root, **{f'method.{field}': value})
    with pytest.raises(ValueError, match=match):
      gcl.GCL(bad, split)
  with pytest.raises(ValueError, match='stage-3 ablation'):
    gcl.GCL(tiny(root, structure='off'), split)
  with pytest.raises(ValueError, match='stage=1'):
    gcl_config.get_config('stage=1')
  method = gcl.GCL(c, split)
  method.build_models()  # the tests' residual-block counts reach the nets
  assert (method.generator.structure_res, method.discriminator.num_res) == (
      1, 1)
  full = gcl_config.get_config('stage=2').method
  assert (full.structure_res, full.dis_num_res) == (4, 4)  # the reference's
  saved = tiny(root)  # the config.json of a run from before the two fields
  del saved.method['structure_res'], saved.method['dis_num_res']
  old = gcl.GCL(saved, split)
  old.build_models()
  assert (old.generator.structure_res, old.discriminator.num_res) == (4, 4)
  ice = {'params': {'backbone': {'w': 1}, 'bnneck': {'b': 2}},
         'batch_stats': {'backbone': {'m': 3}}}
  assert method.adapt_init(ice) == {
      'params': {'identity': {'backbone': {'w': 1}}},
      'batch_stats': {'identity': {'backbone': {'m': 3}}}}
  mine = {'params': {'identity': {}}, 'batch_stats': {}}
  assert method.adapt_init(mine) is mine


def test_first_refresh_without_clusters_stops_with_advice(root, stage2,
                                                          tmp_path):
  c = tiny(root, stage=3, init=stage2[0], **{'method.min_samples': 1000})
  _, _, method, state, _, ctx = methods_testlib.loop_state(
      c, str(tmp_path / 'run'))
  with pytest.raises(clustering_base.ClusteringError,
                     match='raise config.method.rho'):
    method.refresh(ctx, state, 0)


def test_contrast_without_generation_trains_e_id_alone(root, stage2,
                                                       tmp_path, caplog):
  c = tiny(root, stage=3, structure='off', init=stage2[0],
           init_keys=gcl_config.STAGE1_KEYS, num_epochs=1)
  assert c.aug.train == 'gcl_off'
  with caplog.at_level('INFO'):
    out = train.train_and_evaluate(c, str(tmp_path / 'run'))
  # A backbone alone: the new embedding's BN is set before the memory.
  assert 'embedding BN statistics set from 152 train images' in caplog.text
  assert out['train_step_traces'] == 1
  state = methods_testlib.loop_state(c, str(tmp_path / 'run'))[3]
  assert set(state.params) == {'identity'} and set(state.opt_state) == {'id'}
  assert np.all(np.isfinite(_losses(str(tmp_path / 'run'), 'loss_vi')))


@pytest.mark.parametrize('bn_stats,updates', [('all', 4), ('real', 1)])
def test_stage3_running_statistics_from_every_call_or_the_real_batch(
    root, bn_stats, updates):
  """E_id's four train-mode calls chain the running statistics (each call
  reads the previous one's); 'real' keeps only the real batch's update."""
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  from jreid.models import gcl_generator  # pylint: disable=g-import-not-at-top
  c = tiny(root, stage=3, **{'method.bn_stats': bn_stats,
                             'method.id_through_generator': True})
  method = gcl.GCL(c, pipeline.load_dataset(c).train)
  seen = []

  def encode(id_params, stats, img):
    del id_params
    seen.append(stats)
    return {'f_id': img[:, 0, 0], 'embedding': img[:, 0, 0]}, stats + 1

  class Generator:  # encode: the structure; decode: the code plus f_id

    def apply(self, variables, *args, method=None):
      del variables
      if method is gcl_generator.Generator.encode:
        return args[0]
      return args[0] + args[1][:, None, None, :]

  method._encode, method.generator = encode, Generator()
  x = jnp.ones((2, 4, 2, 1))
  _, stats = method._forward(None, None, stats=0, x=x, s_ori=x, s_new=x)
  assert seen == [0, 1, 2, 3] and stats == updates
  with pytest.raises(ValueError, match="choose 'all'"):
    gcl.GCL(tiny(root, stage=3, **{'method.bn_stats': 'fake'}),
            pipeline.load_dataset(c).train)


@pytest.mark.parametrize('through', [True, False])
def test_stage3_id_through_generator_switch(root, through):
  """id_through_generator=False: G's images depend on E_id's weights only
  where E_id reads an image; G's own gradients do not change."""
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  from jreid.models import gcl_generator  # pylint: disable=g-import-not-at-top
  c = tiny(root, stage=3, **{'method.id_through_generator': through})
  method = gcl.GCL(c, pipeline.load_dataset(c).train)
  seen = []

  def encode(id_params, stats, img):  # f_id = w * first pixel
    seen.append(stats)
    f = img[:, 0, 0] * id_params
    return {'f_id': f, 'embedding': f}, stats + 1

  class Generator:  # encode: g * structure; decode: code + g * f_id

    def apply(self, variables, *args, method=None):
      g = variables['params']
      if method is gcl_generator.Generator.encode:
        return g * args[0]
      return args[0] + g * args[1][:, None, None, :]

  method._encode, method.generator = encode, Generator()
  x = jnp.arange(1.0, 17.0).reshape(2, 4, 2, 1)
  s = jnp.full_like(x, 0.5)
  g, w = jnp.float32(1.5), jnp.float32(0.7)

  def grads(name):
    f = lambda g, w: jnp.sum(method._forward(g, w, stats=0, x=x, s_ori=s,
                                             s_new=s)[0][name])
    return [float(v) for v in jax.grad(f, argnums=(0, 1))(g, w)]

  # x1 = g s + g w x[0,0]: by hand, per sample b, 8 pixels.
  first = x[:, 0, 0, 0]
  want_dw = float(jnp.sum(8 * g * first)) if through else 0.0
  assert grads('x1')[1] == pytest.approx(want_dw)
  assert grads('x1')[0] == pytest.approx(float(jnp.sum(8 * (0.5 + w * first))))
  # p1 = E_id(x1) still trains E_id: d/dw of w (g s + g w x00).
  want_p1 = float(jnp.sum(g * 0.5 + (2 if through else 1) * g * w * first))
  assert grads('p1')[1] == pytest.approx(want_p1)
  # x3 = g s + g E_id(x2): G's gradient is the same either way.
  x2_00 = g * 0.5 + g * w * first
  assert grads('x3')[0] == pytest.approx(
      float(jnp.sum(8 * (0.5 + w * x2_00 + g * w * (0.5 + w * first)))))
  del seen[:]
  _, stats = method._forward(g, w, stats=0, x=x, s_ori=s, s_new=s)
  # The repeated E_id(x2) reads the statistics before x2; its update is
  # dropped ('all': three generated calls chain after the real one).
  assert seen == ([0, 1, 2, 3] if through else [0, 1, 2, 2, 3])
  assert stats == (1 if c.method.bn_stats == 'real' else 4)

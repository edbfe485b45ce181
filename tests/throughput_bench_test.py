"""The PyTorch side of benchmarks/throughput.py is the same network as jreid's.

Skipped without torch (the optional `bench` extra). Fast: jreid's side is
shape-only (`jax.eval_shape`), the PyTorch side a CPU init.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jreid import models

torch = pytest.importorskip('torch')

_PATH = pathlib.Path(__file__).parents[1] / 'benchmarks' / 'torch_resnet.py'
_spec = importlib.util.spec_from_file_location('torch_resnet', _PATH)
torch_resnet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_resnet)


def _jreid_params(arch, width, num_classes, h=64, w=32):
  model = models.build_model(dict(name=arch, width=width), num_classes)
  shapes = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)},
                         jnp.zeros((2, h, w, 3)), train=False))
  return shapes['params']


@pytest.mark.parametrize('arch,width', [('resnet50', 64), ('resnet18', 16)])
def test_same_trainable_parameters_as_jreid(arch, width):
  params = _jreid_params(arch, width, num_classes=751)
  jreid_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  net = torch_resnet.ReIDNet(arch, num_classes=751, width=width)
  assert torch_resnet.trainable_parameters(net) == jreid_count
  if arch == 'resnet50':
    # torchvision's ResNet-50 without its fc, the classifier, the neck's scale.
    assert jreid_count == 23_508_032 + 2048 * 751 + 2048


def test_same_head_and_feature_map():
  net = torch_resnet.ReIDNet('resnet18', num_classes=5, width=8).eval()
  with torch.no_grad():
    out = net(torch.zeros(2, 3, 64, 32))
  assert out['feat'].shape == (2, 64) and out['logits'].shape == (2, 5)
  # BNNeck: a weight but no trainable bias; the classifier has no bias.
  assert not net.neck.bias.requires_grad and net.classifier.bias is None


def test_tiny_train_step_and_extraction():
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 64, 32, 3), dtype=np.uint8)
  trainer = torch_resnet.Trainer(images, 4, arch='resnet18', width=8, pad=3)
  before = trainer.model.conv1.weight.detach().clone()
  idx = np.arange(8, dtype=np.int32)
  loss = trainer.step(idx, np.repeat(np.arange(4), 2))
  assert np.isfinite(loss) and loss > 0
  assert not torch.equal(before, trainer.model.conv1.weight)
  f = torch_resnet.extract(trainer.model, images[:4])
  np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
  assert trainer.model.training  # extraction leaves the model in train mode

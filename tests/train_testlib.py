"""The tiny supervised config of the loop-level tests (train, resilience)."""

from jreid_configs import common
from jreid_configs import supervised as supervised_config

TINY_DATA = dict(num_train_ids=12, num_test_ids=6, num_distractors=6,
                 num_junk=4, height=32, width=16)


def shrink(c, *, checkpoint_every: int = 2):
  """Any preset at 32x16, width 8, batch 16, 2 epochs x 3 steps, 1 device."""
  c.data.image_size = (32, 16)
  c.model.width = 8
  c.sampler.batch_size = 16
  c.num_epochs = 2
  c.steps_per_epoch = 3
  c.checkpoint_every_steps = checkpoint_every
  c.evals.batch_size = 32
  c.mesh.num_devices = 1
  return c


def tiny_config(root, **overrides):
  """The supervised runlocal preset, shrunk, on the tiny synthetic set."""
  c = supervised_config.get_config('runlocal')
  c.data.root = root
  c.data.kwargs = TINY_DATA
  return common.override(shrink(c), **overrides)

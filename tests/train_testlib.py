"""The tiny supervised config of the loop-level tests (train, resilience)."""

from jreid_configs import common
from jreid_configs import supervised as supervised_config

TINY_DATA = dict(num_train_ids=12, num_test_ids=6, num_distractors=6,
                 num_junk=4, height=32, width=16)


def tiny_config(root, **overrides):
  """The supervised runlocal preset at 32x16, width 8, 2 epochs x 3 steps."""
  c = supervised_config.get_config('runlocal')
  c.data.root = root
  c.data.kwargs = TINY_DATA
  c.data.image_size = (32, 16)
  c.model.width = 8
  c.sampler.batch_size = 16
  c.num_epochs = 2
  c.steps_per_epoch = 3
  c.checkpoint_every_steps = 2
  c.evals.batch_size = 32
  c.mesh.num_devices = 1
  return common.override(c, **overrides)

"""Models: ResNet/IBN backbones, grouped BatchNorm, ReID heads, weights I/O.

Public API:
  build_model(cfg, num_classes) -> ReIDNet    (reid_net)
  load_pretrained(variables, path, *, arch)   (pretrained; torchvision layout)
  load_pretrained_into(variables, path, *, arch, prefixes)  (several copies)
  copy_subtree(variables, src, dst)           (pretrained; branch copies)
  export_torchvision(variables, path)         (pretrained; the inverse)
  feature_dim(name, width)                    (resnet; output D)
  GroupBatchNorm                              (norm; bn_group_size semantics)
"""

from __future__ import annotations

from jreid.models.norm import GroupBatchNorm
from jreid.models.pretrained import copy_subtree
from jreid.models.pretrained import export_torchvision
from jreid.models.pretrained import load_pretrained
from jreid.models.pretrained import load_pretrained_into
from jreid.models.reid_net import build_model
from jreid.models.reid_net import ReIDNet
from jreid.models.resnet import ARCHS
from jreid.models.resnet import feature_dim

__all__ = [
    'ARCHS',
    'GroupBatchNorm',
    'ReIDNet',
    'build_model',
    'copy_subtree',
    'export_torchvision',
    'feature_dim',
    'load_pretrained',
    'load_pretrained_into',
]

r"""The BoT network, step and extraction of jreid, written in plain PyTorch.

The PyTorch side of `benchmarks/throughput.py`, which times it against jreid
in the same process. Only the benchmark imports this module; torch is the
optional `bench` extra (`pip install 'jreid[bench]'`), never a dependency of
`jreid` itself. No torchvision: the network is written out here.

It mirrors jreid's supervised path (jreid/models, jreid/data/augment.py,
jreid/methods/supervised.py, jreid/optim.py) as the PyTorch references write
it (BoT / torchreid):

* ResNet-50 v1.5 (stride on the 3x3 conv), last stride 1, kaiming fan_out
  init, BN eps 1e-5 momentum 0.1; float32, in either memory format:
  'contiguous' (NCHW, what the references run) or 'channels_last' (NHWC
  strides, PyTorch's advice for CNNs on CPU; jreid's own layout is NHWC).
* Head: global average pooling -> feat; BNNeck (BatchNorm1d with its bias
  frozen at zero, so not trainable) -> bn_feat; bias-free Linear(2048, C)
  initialised normal(std=0.001).
* Loss: label-smoothed CE (eps 0.1) on the logits + batch-hard triplet
  (margin 0.3, Euclidean, hardest positive / negative) on feat.
* Adam(lr 3.5e-4, weight_decay 5e-4): coupled L2, as jreid's 'adam'.
* Input: a uint8 (N, H, W, 3) table in memory; a step gathers its batch,
  then random flip, Pad(10) + random crop, ToTensor + Normalize and
  RandomErasing(p=0.5) per example: the work of jreid's 'bot' view.
* Extraction: uint8 batch -> normalise -> eval forward -> bn_feat -> L2
  normalise -> numpy, as `jreid.evaluation.extract.Extractor`.

With the same architecture, `trainable_parameters` equals the number of
entries of jreid's `params` tree (tests/throughput_bench_test.py checks it).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# name -> (bottleneck?, blocks per stage), as jreid.models.resnet.ARCHS.
ARCHS = {'resnet18': (False, (2, 2, 2, 2)), 'resnet34': (False, (3, 4, 6, 3)),
         'resnet50': (True, (3, 4, 6, 3))}


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes, 1, stride, bias=False),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    s = x if self.downsample is None else self.downsample(x)
    return F.relu(y + s)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
          nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    s = x if self.downsample is None else self.downsample(x)
    return F.relu(y + s)


class ReIDNet(nn.Module):
  """ResNet backbone + average pooling + BNNeck + bias-free classifier.

  forward(x NCHW normalised) -> {'feat', 'bn_feat'[, 'logits']}, as
  jreid.models.reid_net.ReIDNet.
  """

  def __init__(self, arch='resnet50', num_classes=0, width=64,
               last_stride=1):
    super().__init__()
    bottleneck, stages = ARCHS[arch]
    block = Bottleneck if bottleneck else BasicBlock
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    layers, inplanes = [], width
    for i, n in enumerate(stages):
      planes = width * 2**i
      stride = 1 if i == 0 else (last_stride if i == 3 else 2)
      blocks = []
      for j in range(n):
        blocks.append(block(inplanes, planes, stride if j == 0 else 1))
        inplanes = planes * block.expansion
      layers.append(nn.Sequential(*blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.neck = nn.BatchNorm1d(inplanes)
    self.neck.bias.requires_grad_(False)  # BoT's BNNeck: frozen zero bias.
    self.classifier = (nn.Linear(inplanes, num_classes, bias=False)
                       if num_classes else None)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    if self.classifier is not None:
      nn.init.normal_(self.classifier.weight, std=0.001)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    feat = x.mean(dim=(2, 3))
    out = {'feat': feat, 'bn_feat': self.neck(feat)}
    if self.classifier is not None:
      out['logits'] = self.classifier(out['bn_feat'])
    return out


def trainable_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------ losses ---


def cross_entropy_label_smooth(logits, labels, epsilon=0.1):
  log_probs = F.log_softmax(logits, dim=1)
  targets = torch.zeros_like(log_probs).scatter_(1, labels[:, None], 1.0)
  targets = (1 - epsilon) * targets + epsilon / logits.shape[1]
  return (-targets * log_probs).sum(1).mean()


def batch_hard_triplet(feat, labels, margin=0.3):
  d2 = (feat.pow(2).sum(1, keepdim=True) + feat.pow(2).sum(1)[None]
        - 2 * feat @ feat.t())
  dist = d2.clamp(min=1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  d_ap = torch.where(same, dist, torch.full_like(dist, -math.inf)).amax(1)
  d_an = torch.where(same, torch.full_like(dist, math.inf), dist).amin(1)
  has = ~same.all(1)  # anchors with a negative (jreid leaves the rest out)
  per = F.relu(d_ap - d_an + margin)
  return torch.where(has, per, torch.zeros_like(per)).sum() / has.sum().clamp(min=1)


# -------------------------------------------------------------- input work ---


def _erase(x, p=0.5, area=(0.02, 0.4), aspect=0.3, attempts=100):
  """BoT's RandomErasing on one normalised CHW image, in place."""
  if random.uniform(0, 1) >= p:
    return
  _, h, w = x.shape
  for _ in range(attempts):
    target = random.uniform(*area) * h * w
    r = random.uniform(aspect, 1 / aspect)
    eh, ew = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
    if ew < w and eh < h:
      top, left = random.randint(0, h - eh), random.randint(0, w - ew)
      for c, v in enumerate(MEAN):
        x[c, top:top + eh, left:left + ew] = v
      return


MEMORY_FORMATS = {'contiguous': torch.contiguous_format,
                  'channels_last': torch.channels_last}


def bot_view(table: torch.Tensor, idx: torch.Tensor, pad: int = 10):
  """Gather + flip + Pad/RandomCrop + Normalize + RandomErasing -> NCHW."""
  x = table[idx].permute(0, 3, 1, 2).float()  # (B, 3, H, W) pixel values
  b, _, h, w = x.shape
  flip = torch.rand(b) < 0.5
  x = torch.where(flip[:, None, None, None], x.flip(-1), x)
  xp = F.pad(x, (pad, pad, pad, pad))
  off = torch.randint(0, 2 * pad + 1, (b, 2)).tolist()
  x = torch.stack([xp[k, :, i:i + h, j:j + w] for k, (i, j) in enumerate(off)])
  mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
  std = torch.tensor(STD).view(1, 3, 1, 1) * 255
  x = (x - mean) / std
  for k in range(b):
    _erase(x[k])
  return x


class Trainer:
  """One BoT train step on a uint8 table: `step(idx, labels) -> loss`."""

  def __init__(self, images: np.ndarray, num_classes: int, *,
               arch='resnet50', width=64, lr=3.5e-4, weight_decay=5e-4, pad=10,
               ce_epsilon=0.1, margin=0.3, memory_format='contiguous'):
    self.table = torch.from_numpy(images)
    self.format = MEMORY_FORMATS[memory_format]
    self.model = ReIDNet(arch, num_classes, width).to(memory_format=self.format)
    self.model.train()
    self.opt = torch.optim.Adam(
        [p for p in self.model.parameters() if p.requires_grad], lr=lr,
        weight_decay=weight_decay)
    self.pad, self.eps, self.margin = pad, ce_epsilon, margin

  def step(self, idx: np.ndarray, labels: np.ndarray) -> float:
    x = bot_view(self.table, torch.from_numpy(idx).long(), self.pad)
    x = x.contiguous(memory_format=self.format)
    y = torch.from_numpy(labels).long()
    out = self.model(x)
    loss = (cross_entropy_label_smooth(out['logits'], y, self.eps)
            + batch_hard_triplet(out['feat'], y, self.margin))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss.item()


def extract(model: ReIDNet, images: np.ndarray,
            memory_format: str = 'contiguous') -> np.ndarray:
  """Unit-norm eval-mode bn_feat of uint8 (B, H, W, 3) images, as numpy."""
  model.eval()
  with torch.inference_mode():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    x = ((x - mean) / std).contiguous(memory_format=MEMORY_FORMATS[memory_format])
    f = model(x)['bn_feat']
    f = F.normalize(f, dim=1)
  model.train()
  return f.numpy()

r"""Converts a PyTorch checkpoint into a .safetensors or .npz file, no torch.

  python -m jreid.tools.convert_weights resnet50-19c8e357.pth \
      resnet50.safetensors
  python -m jreid.tools.convert_weights resnet50_ibn_a-d9d0bb7b.pth \
      resnet50_ibn_a.npz --arch=resnet50_ibn_a

Reads IN (.pth / .pt / .pth.tar, either torch.save format) with
jreid.models.torch_pickle: a 'state_dict' / 'model' wrapper and 'module.'
prefixes are removed, every tensor is kept (fc.* and num_batches_tracked
too; loading ignores them) in its dtype, except bfloat16, written as
float32 (exactly; .npz cannot hold bfloat16, and numpy reads a bfloat16
safetensors entry only once ml_dtypes is imported). Prints one line per
tensor (key, shape, dtype) and a total, then writes OUT (via a temporary
file, so an interrupted run leaves no half-written OUT).
`config.model.pretrained` takes IN and OUT alike; OUT needs neither the
pickle reader nor torch to load.

--arch=NAME (a jreid backbone, e.g. resnet50) also checks, before writing,
that the tensors are exactly that backbone's torchvision keys and shapes,
as loading would.

Exit status 0 on success; 1 when IN cannot be read, does not match --arch,
or OUT cannot be written (the reason, naming the file, on stderr); 2 for a
wrong command line.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Sequence, TextIO

import ml_dtypes
import numpy as np

from jreid.models import torch_pickle

_SUFFIXES = ('.safetensors', '.npz')


def summary(state: dict[str, np.ndarray]) -> list[str]:
  """One line per tensor (key, shape, dtype), then the totals."""
  width = max(map(len, state), default=0)
  lines = [f'{k:<{width}}  {str(tuple(v.shape)):<18} {v.dtype}'
           for k, v in state.items()]
  total = sum(int(v.size) for v in state.values())
  lines.append(f'{len(state)} tensors, {total:,} values')
  return lines


def _serialize(state: dict[str, np.ndarray], out: str) -> bytes:
  state = {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v
           for k, v in state.items()}
  if out.endswith('.npz'):
    buf = io.BytesIO()
    np.savez(buf, **state)
    return buf.getvalue()
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  return safetensors.numpy.save(state)


def _check_arch(state: dict[str, np.ndarray], path: str, arch: str) -> None:
  """Raises ValueError, as load_pretrained would, when `state` is not arch."""
  from jreid.models import pretrained  # pylint: disable=g-import-not-at-top
  from jreid.models import resnet  # pylint: disable=g-import-not-at-top
  resnet.feature_dim(arch)  # An unknown arch names the known ones.
  kept = {k: v for k, v in state.items()
          if not (k.endswith('num_batches_tracked') or k.startswith('fc.'))}
  # pylint: disable-next=protected-access
  pretrained._check_file(
      kept, pretrained._arch_shapes(arch, pretrained.file_width(kept)), path,
      arch)


def convert(src: str, dst: str, *, arch: str | None = None,
            out: TextIO = sys.stdout) -> dict[str, np.ndarray]:
  """Reads `src`, prints its summary to `out`, writes `dst`; the state.

  Raises:
    FileNotFoundError: `src` missing.
    ValueError: an OUT suffix other than .safetensors / .npz, `src` equal to
      `dst`, `src` unreadable (torch_pickle.CheckpointError) or not `arch`.
    OSError: `dst` cannot be written.
  """
  src, dst = os.fspath(src), os.fspath(dst)
  if not dst.endswith(_SUFFIXES):
    raise ValueError(f'cannot write {dst!r}: OUT must end in .safetensors or '
                     '.npz')
  if os.path.abspath(src) == os.path.abspath(dst):
    raise ValueError(f'IN and OUT are the same file {src!r}')
  state = torch_pickle.load_state_dict(src)
  out.write(''.join(f'{line}\n' for line in summary(state)))
  if arch:
    _check_arch(state, src, arch)
  data = _serialize(state, dst)
  tmp = f'{dst}.tmp{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  out.write(f'wrote {dst}\n')
  return state


def run(argv: Sequence[str], out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
  """convert_weights on a command line (argv[0] is the program); the status."""
  parser = argparse.ArgumentParser(
      prog='python -m jreid.tools.convert_weights',
      description='PyTorch .pth -> .safetensors / .npz, without torch.')
  parser.add_argument('src', metavar='IN', help='.pth / .pt / .pth.tar')
  parser.add_argument('dst', metavar='OUT', help='.safetensors or .npz')
  parser.add_argument('--arch', default=None,
                      help='check the keys and shapes against this backbone '
                      '(e.g. resnet50, resnet50_ibn_a) before writing')
  try:
    args = parser.parse_args(list(argv[1:]))
  except SystemExit as e:  # argparse printed the usage.
    return int(e.code or 0)
  try:
    convert(args.src, args.dst, arch=args.arch, out=out)
  except (OSError, ValueError) as e:
    err.write(f'convert_weights: {e}\n')
    return 1
  return 0


def main() -> None:
  sys.exit(run(sys.argv))


if __name__ == '__main__':
  main()

"""notebooks/quickstart.ipynb runs top to bottom on a tiny config (no rot).

The notebook is executed by nbclient in a fresh IPython kernel of this
interpreter, papermill style: a cell inserted after the one tagged
`parameters` shrinks the run to the loop tests' tiny synthetic set (32x16,
width 8, batch 16, 2 epochs x 3 steps) in a temporary folder. The kernel is
described by a kernel spec written into the temporary folder (argv: this
`sys.executable`), so it neither depends on nor touches any installed
`python3` spec: a fresh venv with only `pip install -e '.[test]'` runs it.
"""

import json
import os
import pathlib
import re
import sys

import jax
from jupyter_client import kernelspec
import nbclient
import nbformat
import pytest

import train_testlib

import jreid

NOTEBOOK = (pathlib.Path(__file__).resolve().parent.parent / 'notebooks' /
            'quickstart.ipynb')
KERNEL = 'jreid-notebook-test'


def _kernel_spec(folder: pathlib.Path) -> None:
  """A kernel spec named KERNEL that starts ipykernel under this Python."""
  spec = folder / 'kernels' / KERNEL
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
               '{connection_file}'],
      'display_name': 'jreid test', 'language': 'python'}))


def _tiny_parameters(tmp: pathlib.Path) -> str:
  values = dict(
      WORKDIR=str(tmp / 'run'), DATA_ROOT=str(tmp / 'data'),
      DATA_KWARGS=train_testlib.TINY_DATA, IMAGE_SIZE=(32, 16), MODEL_WIDTH=8,
      BATCH_SIZE=16, NUM_EPOCHS=2, STEPS_PER_EPOCH=3, EVAL_EVERY_EPOCHS=1,
      LOG_EVERY_STEPS=1, EVAL_BATCH_SIZE=32)
  return '# Injected by tests/notebook_test.py\n' + '\n'.join(
      f'{k} = {v!r}' for k, v in values.items())


def _inject(nb, source: str) -> None:
  """Inserts `source` after the cell tagged 'parameters' (papermill style)."""
  tagged = [i for i, c in enumerate(nb.cells)
            if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, 'the notebook needs one cell tagged "parameters"'
  cell = nbformat.v4.new_code_cell(source)
  cell.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(tagged[0] + 1, cell)


def _cell(nb, text: str):
  (cell,) = [c for c in nb.cells if c.cell_type == 'code' and text in c.source]
  return cell


def _text(cell) -> str:
  return ''.join(o.get('text', '') for o in cell.outputs
                 if o.output_type == 'stream')


def _has_png(cell) -> bool:
  return any('image/png' in o.get('data', {}) for o in cell.outputs
             if o.output_type in ('display_data', 'execute_result'))


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """The kernel's environment: our spec, this checkout, the JAX cache."""
  _kernel_spec(tmp_path / 'jupyter')
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  # The kernel imports the jreid this test imports (a checkout or not).
  root = str(pathlib.Path(jreid.__file__).resolve().parent.parent)
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      p for p in (root, os.environ.get('PYTHONPATH')) if p))
  # conftest's persistent compilation cache, for reruns of the kernel.
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', cache)
    monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
    monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  assert KERNEL in kernelspec.KernelSpecManager().find_kernel_specs()


@pytest.mark.usefixtures('kernel_env')
def test_quickstart_notebook_runs(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  _inject(nb, _tiny_parameters(tmp_path))
  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL, timeout=600, startup_timeout=120,
      resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the traceback, on errors

  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert not errors
  # Outside absl.app, train_and_evaluate's INFO progress lines are visible.
  trained = _text(_cell(nb, 'train.train_and_evaluate(config, WORKDIR)'))
  assert re.search(r'step 1/6 epoch 0 \| loss ', trained), trained[-3000:]
  assert re.search(r'step 6/6 epoch 1 \| loss ', trained), trained[-3000:]
  assert 'epoch 1 test: ' in trained, trained[-3000:]
  assert _has_png(_cell(nb, 'plt.subplots('))
  ranklist = _cell(nb, 'evaluate.evaluate(WORKDIR')
  assert _has_png(ranklist)
  assert '/ranklists/' in _text(ranklist)

  with open(tmp_path / 'run' / 'results.json') as f:
    summary = json.load(f)
  assert summary['steps'] == 6
  assert 0.0 <= summary['mAP'] <= 1.0

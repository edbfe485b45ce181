"""The builder every jreid TFDS dataset shares: jreid's parser -> ArrayRecord.

A builder does not parse anything itself: `_split_generators` calls the
dataset's own jreid parser (`registry.get('dataset', DATASET)`) on the
manual folder, so the TFDS splits hold exactly the records the folder path
reads (`config.data.source='folder'`), in the same order:

  image   the file's bytes as stored on disk (never re-encoded; the four
          real sets are JPEG, so `encoding_format='jpeg'`),
  path    the file's path relative to the dataset folder the parser found
          ('bounding_box_train/0002_c1s1_000451_03.jpg'),
  pid     int32, the parser's pid (Market-1501 distractors 0, junk -1),
  camid   int32, 0-based,
  FIELDS  one int32 per name, for parsers whose splits carry per-record
          fields (`records.Split.fields`); none of the five sets here do.

`disable_shuffling=True` and the record's index as its key keep each split in
parse order, so record i of the TFDS split is record i of the folder split
(jreid's samplers and evaluators depend on indices, not only on contents).

The dataset's `metadata.json` holds the parser arguments of the build (the
config's `kwargs`; for the synthetic set every generator parameter), which
reading (`jreid.data.tfds_source`) checks `config.data.kwargs` against, and a
SHA-256 of each split's records (bytes, paths, ids), which names the build
in the image addresses reading hands out.

Building needs no TensorFlow with tensorflow-datasets 4.9.10: the
GeneratorBasedBuilder's example serializer and ArrayRecord writer run on
numpy and protobuf (tests/data/tfds_test.py builds with TensorFlow
unimportable). The `tfds` command line itself cannot start without both
TensorFlow and Apache Beam (its `convert_format` command uses them at import
time), so `python -m jreid.data.tfds.build` runs the same `tfds build` code
without them (docs/tfds.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from typing import Any, ClassVar, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jreid import registry
from jreid.data import records
# Feature and metadata names: what reading (tfds_source) expects.
from jreid.data.tfds_source import CAMID
from jreid.data.tfds_source import IMAGE
from jreid.data.tfds_source import META_DATASET
from jreid.data.tfds_source import META_KWARGS
from jreid.data.tfds_source import META_SHA256
from jreid.data.tfds_source import PATH
from jreid.data.tfds_source import PID
from jreid.data.tfds_source import SPLITS


@dataclasses.dataclass(eq=False)
class ReidConfig(tfds.core.BuilderConfig):
  """A builder config: the jreid parser's keyword arguments.

  Attributes:
    kwargs: passed to the parser as `load(root, **kwargs)` (e.g.
      {'layout': 'v2'} for MSMT17, the generator parameters for the
      synthetic set); {} parses with the parser's defaults.
  """
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def features(fields: tuple[str, ...] = ()) -> tfds.features.FeaturesDict:
  """The features of one record (module docstring)."""
  spec = {
      IMAGE: tfds.features.Image(shape=(None, None, 3),
                                 encoding_format='jpeg',
                                 doc='the image file bytes, as on disk'),
      PATH: tfds.features.Text(
          doc='the file path relative to the dataset folder'),
      PID: tfds.features.Scalar(
          np.int32, doc='identity; 0 distractor, -1 junk (gallery only)'),
      CAMID: tfds.features.Scalar(np.int32, doc='camera, 0-based'),
  }
  for name in fields:
    if name in spec:
      raise ValueError(f'per-record field {name!r} clashes with a feature')
    spec[name] = tfds.features.Scalar(np.int32, doc=f'records field {name}')
  return tfds.features.FeaturesDict(spec)


class ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the jreid builders; a subclass sets the class attributes.

  Attributes:
    name: the TFDS name, 'jreid_<DATASET>'.
    DATASET: the jreid dataset registry name whose parser reads the folder.
    FIELDS: the per-record int fields the parser's splits carry.
    HOMEPAGE, CITATION, DESCRIPTION: for dataset_info.json.
  """

  DATASET: ClassVar[str] = ''
  FIELDS: ClassVar[tuple[str, ...]] = ()
  HOMEPAGE: ClassVar[str] = ''
  CITATION: ClassVar[str] = ''
  DESCRIPTION: ClassVar[str] = ''
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'jreid parser records: image, path, pid, camid.'}
  BUILDER_CONFIGS = [ReidConfig(name='default',
                                description="the parser's defaults")]

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord, not TFDS's TFRecord default: `tfds.data_source` (random
    # access, no TensorFlow) reads only ArrayRecord. An explicit
    # --file_format still wins.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tensorflow-datasets 4.9.10 computes this through the
    # `importlib_resources` backport, which it only installs on Python < 3.9
    # (tensorflow/datasets#11212), so any builder defined in a package fails
    # to build on 3.11 without it. The class's file is what it computes.
    return epath.Path(inspect.getfile(cls))

  # ----------------------------------------------------------------- hooks
  def source_root(self, dl_manager) -> str:
    """The folder handed to the parser; the manual folder by default."""
    return os.fspath(dl_manager.manual_dir)

  def parser_kwargs(self) -> dict[str, Any]:
    """The parser's arguments, as recorded in metadata.json."""
    return dict(self.builder_config.kwargs)

  # ------------------------------------------------------------------ TFDS
  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION or self.__doc__,
        features=features(self.FIELDS),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        disable_shuffling=True,  # parse order is part of the records
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    root = self.source_root(dl_manager)
    dataset = registry.get('dataset', self.DATASET)(
        os.path.abspath(root), **self.builder_config.kwargs)
    for split in SPLITS:
      extra = set(getattr(dataset, split).fields) - set(self.FIELDS)
      if extra:
        raise records.DatasetError(
            f'{self.name}: the {split} split carries fields {sorted(extra)} '
            f'that the builder does not declare; add them to FIELDS')
    self.info.metadata[META_DATASET] = self.DATASET
    self.info.metadata[META_KWARGS] = self.parser_kwargs()
    self.info.metadata[META_SHA256] = {}
    return {name: self._generate_examples(getattr(dataset, name),
                                          dataset.root, name)
            for name in SPLITS}

  def _generate_examples(self, split: records.Split, root: str,
                         name: str = ''
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    digest = hashlib.sha256()
    for i, path in enumerate(split.paths):
      with open(path, 'rb') as f:
        data = f.read()
      example = {IMAGE: data,
                 PATH: os.path.relpath(path, root).replace(os.sep, '/'),
                 PID: int(split.pids[i]), CAMID: int(split.camids[i])}
      for field in self.FIELDS:
        example[field] = (int(split.fields[field][i])
                          if field in split.fields else -1)
      digest.update(repr(sorted((k, v) for k, v in example.items()
                                if k != IMAGE)).encode())
      digest.update(b'%d:' % len(data) + data)
      # The index as key: with disable_shuffling the split keeps this order.
      yield i, example
    # Generation ends before TFDS writes metadata.json.
    self.info.metadata[META_SHA256][name] = digest.hexdigest()

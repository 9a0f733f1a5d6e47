"""The training pipeline's steps as pure functions over local paths.

KFP components (``services.trigger.pipeline``) are thin wrappers around these;
tests call them directly. Inputs and outputs are paths and JSON-able values.
Everything model-specific comes from the *model module* (the contract in
``shared/contract.py``, docs/models.md), loaded by path: ``LABEL_KEY``,
``RAW_LABEL_FEATURES``, ``preprocessing_fn``, ``build_model``, ``eval_config``.

Data formats, and why:

- Windows and the gathered train/eval sets are Parquet (flat nullable columns).
- TFT and the serving signature both parse *serialized tf.Examples* with the
  schema's raw feature spec (``raw_examples`` converts Arrow rows, nulls left
  out). Training-time and serving-time inputs therefore go through the same
  parser, and missing values look the same (absent values of a SparseTensor).
- Transformed train/eval data are GZIP TFRecords of tf.Examples with TFT's
  transformed feature spec, read back with ``tf.data``.
- The SavedModel has two signatures: ``serving_default`` (serialized raw
  examples without the raw label features -> the model's output under the
  module's ``OUTPUT_KEY``: ``probabilities`` or ``predictions`` by task) and
  ``transform_features`` (serialized raw examples -> all TFT outputs, label
  included). ``evaluate`` computes the label of each held-out example with the
  latter and writes it into the eval examples as an int feature ``LABEL_KEY``,
  which TFMA reads with ``label_key`` -- so the label is defined once, in
  ``preprocessing_fn``, and TFMA needs no preprocessing support of its own.

Heavy libraries (TensorFlow, TFT, TFMA, TFDV, Beam) are imported inside the
functions so that importing this module stays cheap.
"""

from __future__ import annotations

from services.trigger.steps.common import (
    BEAM_ARGS,
    BlockingAnomalies,
    StepError,
    load_module,
    raw_examples,
)
from services.trigger.steps.data import gather, transform, validate_data
from services.trigger.steps.evaluator import evaluate
from services.trigger.steps.trainer import libraries_without_autograph, train

__all__ = [
    "BEAM_ARGS",
    "BlockingAnomalies",
    "StepError",
    "evaluate",
    "gather",
    "libraries_without_autograph",
    "load_module",
    "raw_examples",
    "train",
    "transform",
    "validate_data",
]

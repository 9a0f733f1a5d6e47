"""The model-module contract (docs/models.md), checked before any run starts.

A model module is a Python file the pipeline loads by path. What it must define:

- ``LABEL_KEY`` (str): the output of ``preprocessing_fn`` that is the label;
- ``RAW_LABEL_FEATURES`` (tuple of str): raw features needed only to compute
  the label; they are left out of the serving signature's input;
- ``preprocessing_fn(inputs) -> dict``: the TF Transform graph;
- ``build_model(tf_transform_output) -> tf_keras.Model``: compiled, over the
  transformed features, with one output;
- ``eval_config(baseline: bool) -> tfma.EvalConfig``: metrics, slices and
  thresholds (change thresholds only when ``baseline`` is true);
- optionally ``SLICES`` (list of lists of feature names), ``OUTPUT_KEY`` (the
  serving signature's output name; default ``probabilities`` for classifiers,
  ``predictions`` for regression) and ``TFT_FORCE_TF_COMPAT_V1`` (bool, default
  False: TF Transform traces ``preprocessing_fn`` into one TF1 graph instead of
  ``tf.function`` s, which is faster; see docs/models.md).

The checks here need no TensorFlow: they run at the trigger's start-up and in
``ctrain model check`` (which then also runs the module on data).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tensorflow_metadata.proto.v0 import schema_pb2


@runtime_checkable
class ModelModule(Protocol):
    """What the training steps use from a model module."""

    LABEL_KEY: str
    RAW_LABEL_FEATURES: tuple[str, ...]

    def preprocessing_fn(self, inputs: dict[str, Any]) -> dict[str, Any]: ...
    def build_model(self, tf_transform_output: Any) -> Any: ...
    def eval_config(self, baseline: bool) -> Any: ...


@dataclass(frozen=True)
class Problem:
    """One thing wrong, in plain words, and how to fix it."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what} -- fix: {self.fix}"


class ContractError(ValueError):
    """A model module or schema breaks the contract; ``problems`` lists every breach."""

    def __init__(self, subject: str, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{subject}:\n{lines}")


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def import_module(path: str | Path) -> types.ModuleType:
    """Import a module file by path under a name derived from its content."""
    p = Path(path)
    if not p.is_file():
        raise ContractError(
            f"model module {p}",
            [Problem("the file does not exist", "give the path of the module's .py file")],
        )
    name = f"ctrain_model_{sha256_file(p)[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ContractError(
            f"model module {p}", [Problem("Python cannot load it", "name a .py file")]
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ContractError(
            f"model module {p}",
            [
                Problem(
                    f"importing it raised {type(e).__name__}: {e}",
                    "run `python PATH` to see the traceback; import TensorFlow inside "
                    "functions, not at the top of the module",
                )
            ],
        ) from e
    return module


def _callable_with(module: types.ModuleType, name: str, params: int) -> list[Problem]:
    fn = getattr(module, name, None)
    if fn is None:
        return [Problem(f"it defines no {name}", f"add `def {name}(...)` (docs/models.md)")]
    if not callable(fn):
        return [Problem(f"{name} is not a function", f"define {name} with `def`")]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    required = [
        p
        for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if len(required) > params or (len(positional) < params and not varargs):
        return [
            Problem(
                f"{name} takes {len(required)} required argument(s); the pipeline passes {params}",
                f"give {name} exactly {params} positional parameter(s)",
            )
        ]
    return []


def check_module(module: types.ModuleType) -> list[Problem]:
    """Every breach of the contract the module shows without running TensorFlow."""
    out: list[Problem] = []
    label = getattr(module, "LABEL_KEY", None)
    if label is None:
        out.append(Problem("it defines no LABEL_KEY", 'add LABEL_KEY = "<label output name>"'))
    elif not isinstance(label, str) or not label:
        out.append(Problem(f"LABEL_KEY is {label!r}, not a name", "make LABEL_KEY a string"))
    raw = getattr(module, "RAW_LABEL_FEATURES", None)
    if raw is None:
        out.append(
            Problem(
                "it defines no RAW_LABEL_FEATURES",
                "add RAW_LABEL_FEATURES = (...) naming the raw features only the label "
                "needs (() when none)",
            )
        )
    elif not isinstance(raw, tuple | list) or not all(isinstance(x, str) for x in raw):
        out.append(
            Problem(
                f"RAW_LABEL_FEATURES is {raw!r}",
                "make it a tuple of feature names, e.g. ('tips',)",
            )
        )
    out += _callable_with(module, "preprocessing_fn", 1)
    out += _callable_with(module, "build_model", 1)
    out += _callable_with(module, "eval_config", 1)
    key = getattr(module, "OUTPUT_KEY", "x")
    if not isinstance(key, str) or not key:
        out.append(Problem(f"OUTPUT_KEY is {key!r}", 'make it a name, e.g. "probabilities"'))
    compat = getattr(module, "TFT_FORCE_TF_COMPAT_V1", False)
    if not isinstance(compat, bool):
        out.append(
            Problem(
                f"TFT_FORCE_TF_COMPAT_V1 is {compat!r}", "make it True or False (or leave it out)"
            )
        )
    slices = getattr(module, "SLICES", [])
    if not isinstance(slices, list | tuple) or not all(
        isinstance(s, list | tuple) and all(isinstance(k, str) for k in s) for s in slices
    ):
        out.append(Problem(f"SLICES is {slices!r}", 'make it a list of lists: [["site"]]'))
    return out


# The exported model's signatures (the pipeline writes them; the promoter's smoke
# prediction, the demo and any client call them).
SERVING_SIGNATURE = "serving_default"
TRANSFORM_SIGNATURE = "transform_features"
SERVING_INPUT = "examples"


def output_key(module: types.ModuleType, task: str) -> str:
    """The serving signature's output name: the module's ``OUTPUT_KEY``, else the task's."""
    key = getattr(module, "OUTPUT_KEY", None)
    if key:
        return str(key)
    return "predictions" if task == "regression" else "probabilities"


def tft_compat_v1(module: types.ModuleType) -> bool:
    """Whether TF Transform runs the module's ``preprocessing_fn`` as a TF1 graph
    (``force_tf_compat_v1``): the module's ``TFT_FORCE_TF_COMPAT_V1``, else False (TFT's
    and TFX's default)."""
    return getattr(module, "TFT_FORCE_TF_COMPAT_V1", False) is True


def check_schema(
    schema: schema_pb2.Schema, raw_label_features: tuple[str, ...] = ()
) -> list[Problem]:
    """Schema problems TF Transform would only report minutes into a run."""
    out: list[Problem] = []
    names = {f.name for f in schema.feature}
    if not names:
        out.append(Problem("the schema declares no feature", "add the stream's features"))
    for f in schema.feature:
        if f.HasField("shape"):
            fraction = f.presence.min_fraction if f.HasField("presence") else 0.0
            if fraction < 1.0:
                out.append(
                    Problem(
                        f"feature {f.name!r} has a fixed shape but may be missing "
                        f"(presence.min_fraction {fraction:g} < 1): TF Transform parses it as "
                        "a dense tensor and fails on the first example without it",
                        f"drop the shape of {f.name!r} (ctrain reads it as a sparse value) "
                        "or set its presence.min_fraction to 1",
                    )
                )
        if f.type == schema_pb2.TYPE_UNKNOWN:
            out.append(
                Problem(f"feature {f.name!r} has no type", "set type to INT, FLOAT or BYTES")
            )
    for r in raw_label_features:
        if names and r not in names:
            out.append(
                Problem(
                    f"RAW_LABEL_FEATURES names {r!r}, which the schema does not declare",
                    f"add {r!r} to the schema or remove it from RAW_LABEL_FEATURES",
                )
            )
    return out


def check(
    module_path: str | Path,
    schema: schema_pb2.Schema | None = None,
    eval_configs: bool = False,
) -> types.ModuleType:
    """Import and check the module (and the schema; with ``eval_configs``, the TFMA configs
    it builds too): raise one error listing every problem."""
    module = import_module(module_path)
    problems = check_module(module)
    if schema is not None:
        raw = getattr(module, "RAW_LABEL_FEATURES", ())
        problems += check_schema(schema, tuple(raw) if isinstance(raw, tuple | list) else ())
    if eval_configs and not problems:
        problems += eval_config_problems(module)
    if problems:
        raise ContractError(f"model module {module_path}", problems)
    return module


def eval_config_problems(module: Any) -> list[Problem]:
    """``eval_config(False)`` and ``eval_config(True)`` must build TFMA EvalConfigs."""
    import tensorflow_model_analysis as tfma

    out: list[Problem] = []
    for baseline in (False, True):
        try:
            cfg = module.eval_config(baseline)
        except Exception as e:  # noqa: BLE001 -- the module's own code: any error is the finding
            out.append(
                Problem(
                    f"eval_config({baseline}) raised {type(e).__name__}: {e}",
                    "make eval_config return a tfma.EvalConfig for both values",
                )
            )
            continue
        if not isinstance(cfg, tfma.EvalConfig):
            out.append(
                Problem(
                    f"eval_config({baseline}) returned {type(cfg).__name__}",
                    "return tfma.EvalConfig (text_format.Parse(text, tfma.EvalConfig()))",
                )
            )
            continue
        keys = {s.label_key for s in cfg.model_specs if s.label_key}
        if keys - {module.LABEL_KEY}:
            out.append(
                Problem(
                    f"eval_config({baseline}) reads label {sorted(keys)}, not LABEL_KEY "
                    f"{module.LABEL_KEY!r}",
                    "use LABEL_KEY in model_specs (or leave label_key out)",
                )
            )
        if not cfg.metrics_specs:
            out.append(Problem(f"eval_config({baseline}) has no metrics", "add metrics_specs"))
    return out

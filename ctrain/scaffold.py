"""``ctrain model new NAME --data FILE --label COLUMN``: from a CSV to a model ctrain runs.

Infers the stream's schema with TFDV (for review), writes a model module with a
sound baseline for the task (z-scored numerics, vocabularies for strings, a
small Keras model, metrics and thresholds sized from the data) and adds the
model to the models file. Everything it writes is plain text meant to be read
and edited; ``ctrain model check`` runs on the result before it is accepted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shared.config import parse_config


class ScaffoldError(ValueError):
    """The data or the request cannot make a model; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    name: str
    task: str
    label: str
    numeric: tuple[str, ...]
    strings: tuple[str, ...]
    time_column: str | None
    rows: int
    classes: tuple[str, ...]  # label values (classification), as strings
    positive: str | None  # binary: the class predicted as 1
    label_mean: float  # regression: where the model's output starts
    label_std: float
    floor: float  # binary AUC / multiclass accuracy floor, or regression MAE ceiling
    change: float  # how much worse than the serving model a candidate may be
    # Rows whose label is empty: they stream as unlabelled examples (labels.source:
    # stream), their labels may come later on ctrain.labels.
    unlabelled: int = 0

    @property
    def labelled(self) -> int:
        return self.rows - self.unlabelled


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


def plan(name: str, table: pa.Table, label: str, task: str | None, time_column: str | None) -> Plan:
    if not re.match(r"^[a-z0-9][a-z0-9_-]{0,62}$", name):
        raise ScaffoldError(f"model name {name!r}: use lower-case letters, digits, '-' and '_'")
    if table.num_rows == 0:
        raise ScaffoldError("the file has no rows")
    if label not in table.column_names:
        raise ScaffoldError(
            f"no column {label!r} in the data; columns: {', '.join(table.column_names)}"
        )
    if time_column and time_column not in table.column_names:
        raise ScaffoldError(f"no time column {time_column!r} in the data")
    col = table.column(label).drop_null()
    if len(col) == 0:
        raise ScaffoldError(f"label {label!r} is empty in every row: pick another label")
    distinct = pc.unique(col)
    if task is None:
        if not _is_number(col.type) or (pa.types.is_integer(col.type) and len(distinct) <= 20):
            task = "binary" if len(distinct) == 2 else "multiclass"
        else:
            task = "regression"
    if task in ("binary", "multiclass"):
        if len(distinct) < 2:
            raise ScaffoldError(
                f"label {label!r} has one value ({distinct[0].as_py()!r}): a classifier needs "
                "two classes or more"
            )
        if task == "binary" and len(distinct) != 2:
            raise ScaffoldError(
                f"label {label!r} has {len(distinct)} values; binary needs exactly 2 "
                "(use --task multiclass)"
            )
        if pa.types.is_floating(col.type):
            raise ScaffoldError(f"label {label!r} is a float: use --task regression")
    elif not _is_number(col.type):
        raise ScaffoldError(f"label {label!r} is not numeric: regression needs numbers")
    features = [c for c in table.column_names if c not in (label, time_column)]
    if not features:
        raise ScaffoldError("the data has no feature columns besides the label and time")
    numeric = tuple(c for c in features if _is_number(table.column(c).type))
    strings = tuple(c for c in features if c not in numeric)
    classes: tuple[str, ...] = ()
    positive = None
    label_mean, label_std = 0.0, 1.0
    if task == "regression":
        values = pc.cast(col, pa.float64())
        mean = pc.mean(values).as_py()
        label_mean = round(float(mean), 6)
        label_std = round(float(pc.stddev(values).as_py() or 1.0) or 1.0, 6)
        mad = pc.mean(pc.abs(pc.subtract(values, mean))).as_py()
        floor, change = float(mad), max(float(mad) * 0.05, 1e-6)  # must beat the mean
    else:
        counts = pc.value_counts(pc.cast(col, pa.string())).to_pylist()
        counts.sort(key=lambda d: (-d["counts"], d["values"]))
        classes = tuple(d["values"] for d in counts)
        if task == "binary":
            positive = classes[-1]  # the rarer class is the one worth predicting
            floor, change = 0.55, 0.01
        else:
            majority = counts[0]["counts"] / len(col)
            floor, change = round(min(0.99, majority + 0.01), 3), 0.02
    return Plan(name, task, label, numeric, strings, time_column, table.num_rows, classes,
                positive, label_mean, label_std, floor, change,
                table.num_rows - len(col))  # fmt: skip


def infer_schema(table: pa.Table) -> Any:
    """TFDV's schema for the table: types and presence; no shapes (values may be missing)."""
    import tensorflow_data_validation as tfdv

    stats = tfdv.generate_statistics_from_dataframe(table.to_pandas())
    schema = tfdv.infer_schema(stats, infer_feature_shape=False)
    # Every feature holds one value per example: ingest decodes them as scalars.
    for f in schema.feature:
        f.value_count.min = 1
        f.value_count.max = 1
    # Inferred string domains would reject every new category as an anomaly; the
    # validator's drift measure is the right judge of new values, so drop them.
    for f in schema.feature:
        f.ClearField("domain") if f.HasField("domain") else None
    del schema.string_domain[:]
    return schema


HEADER = '''"""{name}: a {task} model ctrain generated from {data} (edit freely; docs/models.md).

Numeric features are z-scored (a missing value becomes the mean), string features
get a vocabulary and an embedding; the label is {label!r}. Thresholds were sized
from the data: {why}.
"""

from __future__ import annotations

from typing import Any

LABEL_KEY = "label_xf"
RAW_LABEL_FEATURES: tuple[str, ...] = ({label!r},)
NUMERIC: tuple[str, ...] = {numeric!r}
STRINGS: tuple[str, ...] = {strings!r}
TASK = {task!r}
CLASSES: tuple[str, ...] = {classes!r}
POSITIVE = {positive!r}
FLOOR = {floor!r}
CHANGE = {change!r}
SLICES: list[list[str]] = {slices!r}
LABEL_MEAN = {label_mean!r}
LABEL_STD = {label_std!r}
'''

# The module's code, the same for every generated model: it reads the constants above.
BODY = (Path(__file__).parent / "scaffold_module.py").read_text


def module_text(p: Plan, data: str) -> str:
    why = {
        "binary": f"AUC at least {p.floor} (chance is 0.5), at most {p.change} below the serving "
        f"model; the positive class is {p.positive!r}",
        "multiclass": f"accuracy at least {p.floor} (the majority class alone scores "
        f"{p.floor - 0.01:.3f}), at most {p.change} below the serving model",
        "regression": f"mean absolute error at most {p.floor:.4g} (what predicting the mean "
        f"scores), at most {p.change:.3g} above the serving model's",
    }[p.task]
    slices = [[s] for s in p.strings[:1]]
    head = HEADER.format(
        name=p.name, task=p.task, data=Path(data).name, label=p.label, why=why,
        numeric=p.numeric, strings=p.strings, classes=p.classes, positive=p.positive,
        floor=round(p.floor, 6), change=round(p.change, 6), slices=slices,
        label_mean=p.label_mean, label_std=p.label_std,
    )  # fmt: skip
    body = BODY().split("# --- generated modules start here ---\n", 1)[1]
    return head + body


def sizes(p: Plan, table: pa.Table) -> dict[str, Any]:
    """Window rules and training sizes from the data: about 20 windows in all, training on
    a quarter of the labelled rows and evaluating on a tenth (the smallest sizes that
    stay sound). Without a time column the rows are cut into windows by count, in file
    order, each window a period of its own, never smaller than the validator judges."""
    min_examples = max(50, min(200, p.rows // 40))
    windows: dict[str, Any] = {"idle_timeout_s": 5}
    if p.time_column:
        ts = (
            pc.cast(table.column(p.time_column), pa.timestamp("s"))
            if not _is_number(table.column(p.time_column).type)
            else table.column(p.time_column)
        )
        lo, hi = pc.min_max(pc.cast(ts, pa.int64())).values()
        span = max(1, int(hi.as_py() - lo.as_py()))
        windows.update(
            event_time_field=p.time_column,
            window_duration_s=max(60, span // 20),
            allowed_lateness_s=max(60, span // 20),
            window_max_count=max(1000, p.rows),
        )
    else:
        windows["window_max_count"] = max(min_examples, p.rows // 20)
    out: dict[str, Any] = {
        "windows": windows,
        "validation": {"min_examples": min_examples}
        | ({"ignore_features": [p.time_column]} if p.time_column else {}),
        "trigger": {
            "min_train_examples": max(50, p.labelled // 4),
            "min_eval_examples": max(30, min(2000, p.labelled // 10)),
            "cooldown_s": 0,
        },
    }
    if p.unlabelled:
        out["labels"] = {"source": "stream"}
    return out


def config_entry(p: Plan, table: pa.Table, schema: Path, module: Path, base: Path) -> str:
    import yaml

    def rel(f: Path) -> str:
        try:
            return str(f.resolve().relative_to(base.resolve()))
        except ValueError:
            return str(f.resolve())

    entry = {
        p.name: {
            "stream": p.name,
            "schema": rel(schema),
            "module": rel(module),
            "task": p.task,
            **sizes(p, table),
            "promotion": {"policy": "manual"},
        }
    }
    text = yaml.safe_dump(entry, sort_keys=False, default_flow_style=None)
    return "".join(f"  {line}\n" for line in text.splitlines())


def add_to_config(config: Path, name: str, entry: str) -> None:
    """Append the model to the models file (created if absent), keeping what is there."""
    if config.exists():
        text = config.read_text()
        cfg = parse_config(text, config.parent, str(config))
        if name in cfg.models:
            raise ScaffoldError(f"{config} already declares a model {name!r}")
        new = text.rstrip("\n") + "\n" + entry
    else:
        new = "# Models ctrain runs (docs/config.md).\nversion: 1\nmodels:\n" + entry
    parse_config(new, config.parent, str(config))  # refuse to write a file that would not load
    config.write_text(new)


def finite(x: float) -> bool:
    return math.isfinite(x)

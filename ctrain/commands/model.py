"""``ctrain model check PATH [--schema S] [--data FILE]``: a model module, checked early.

Without data: the contract (names, types, signatures), the schema (what TF
Transform cannot read) and the module's ``eval_config`` for both a first model
and one with a baseline. With data: the training steps themselves on a sample
of the file (TF Transform, one epoch of the model, a TFMA evaluation), so a
module that would fail minutes into a run fails here in plain words.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ctrain import devstack, scaffold, where
from ctrain.commands import common
from ctrain.replay import ReplayError, read_table
from shared import contract
from shared.contract import Problem
from shared.settings import SettingsError
from shared.tasks import TASKS


def register(sub: Any) -> None:
    mo = sub.add_parser("model", help="check a model module against the contract")
    msub = mo.add_subparsers(dest="action", required=True)
    ck = msub.add_parser("check", help="load, check and (with --data) run a model module")
    ck.add_argument("path", help="the model module (.py)")
    ck.add_argument("--schema", help="schema.pbtxt (default: the models file's, by --model)")
    ck.add_argument("--model", help="take module and schema from this model of the models file")
    ck.add_argument("--data", help="CSV/Parquet/JSON lines to run the steps on")
    ck.add_argument("--rows", type=int, default=600, help="sample size of --data (600)")
    ck.set_defaults(func=check_command)
    nw = msub.add_parser("new", help="a schema, a model module and a models-file entry from data")
    nw.add_argument("name", help="the model's name (also its stream's)")
    nw.add_argument("--data", required=True, help="CSV/Parquet/JSON lines with a label column")
    nw.add_argument("--label", required=True, help="the column to predict")
    nw.add_argument("--task", choices=list(TASKS),
                    help="default: from the label (2 values: binary; few: multiclass; numbers: "
                    "regression)")  # fmt: skip
    nw.add_argument("--time-column", help="event time (epoch seconds or ISO 8601)")
    nw.add_argument("--dir", help="where schema.pbtxt and model.py go (default: models/NAME)")
    nw.add_argument("--config", help="models file to add it to (default: CTRAIN_CONFIG or "
                    "./ctrain.yaml)")  # fmt: skip
    nw.set_defaults(func=new_command)


def _schema_for(args: argparse.Namespace) -> str | None:
    if args.schema:
        return str(args.schema)

    cfg = common.models_file(devstack.load_state())
    if cfg is None:
        return None
    if args.model:
        return cfg.models[args.model].schema_path if args.model in cfg.models else None
    want = str(Path(args.path).resolve())
    return next((m.schema_path for m in cfg.models.values() if m.module == want), None)


def run_on_data(module_path: str, schema_path: str, data: str, rows: int) -> list[Problem]:
    """The training steps on a sample: transform, one epoch, evaluation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from services.trigger import steps
    from shared.schema import example_spec, load_schema
    from shared.shard import arrow_schema

    try:
        table = read_table(data)
    except Exception as e:  # noqa: BLE001 -- any reader error is the user's file
        return [Problem(f"cannot read {data}: {e}", "give a CSV, Parquet or JSON-lines file")]
    if table.num_rows < 20:
        return [Problem(f"{data} has {table.num_rows} rows", "give at least 20 rows")]
    schema = arrow_schema(example_spec(load_schema(schema_path)))
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        return [
            Problem(
                f"the data lacks column(s) {', '.join(missing)} the schema declares",
                "add them to the data or remove them from the schema",
            )
        ]
    sample = table.slice(0, rows)
    try:
        typed = pa.table(
            [sample.column(f.name).cast(f.type) for f in schema], schema=pa.schema(list(schema))
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        return [Problem(f"the data does not fit the schema's types: {e}", "fix the column")]
    cut = max(1, int(typed.num_rows * 0.8))
    out: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="ctrain-model-check-") as d:
        train_uri, eval_uri = os.path.join(d, "train.parquet"), os.path.join(d, "eval.parquet")
        pq.write_table(typed.slice(0, cut), train_uri)
        pq.write_table(typed.slice(cut), eval_uri)
        stages = (
            ("TF Transform (preprocessing_fn)", "transform"),
            ("one epoch (build_model)", "train"),
            ("TFMA (eval_config)", "evaluate"),
        )
        results: dict[str, Any] = {}
        for label, stage in stages:
            t0 = time.perf_counter()
            try:
                if stage == "transform":
                    results[stage] = steps.transform(
                        train_uri, eval_uri, schema_path, module_path, os.path.join(d, "tft")
                    )
                elif stage == "train":
                    results[stage] = steps.train(
                        results["transform"], module_path, os.path.join(d, "model"), epochs=1
                    )
                else:
                    results[stage] = steps.evaluate(
                        str(results["train"]["model"]),
                        eval_uri,
                        module_path,
                        os.path.join(d, "eval"),
                    )
            except Exception as e:  # noqa: BLE001 -- the module ran: any error is the finding
                out.append(
                    Problem(
                        f"{label} failed: {type(e).__name__}: {str(e)[:600]}",
                        "see docs/models.md for what each function receives and returns",
                    )
                )
                break
            common.console.print(f"  [green]ok[/green] {label} ({time.perf_counter() - t0:.1f}s)")
    return out


def check_command(args: argparse.Namespace) -> int:
    import logging
    import warnings

    from shared.schema import SchemaError, load_schema

    # The libraries' start-up chatter would bury the findings.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore")
    for name in ("tensorflow", "absl", "apache_beam"):
        logging.getLogger(name).setLevel(logging.ERROR)

    path = str(Path(args.path).resolve())
    problems: list[Problem] = []
    try:
        module = contract.import_module(path)
    except contract.ContractError as e:
        common.console.print(f"[red]{e}[/red]")
        return 1
    problems += contract.check_module(module)
    schema_path = _schema_for(args)
    if schema_path is None:
        common.console.print(
            "[yellow]no schema[/yellow]: give --schema (or --model) to check it too"
        )
    else:
        try:
            raw = getattr(module, "RAW_LABEL_FEATURES", ())
            problems += contract.check_schema(
                load_schema(schema_path), tuple(raw) if isinstance(raw, tuple | list) else ()
            )
        except SchemaError as e:
            problems.append(Problem(str(e), "fix the schema file"))
    if not problems:
        problems += contract.eval_config_problems(module)
    if not problems and args.data:
        if schema_path is None:
            problems.append(Problem("--data needs a schema", "give --schema or --model"))
        else:
            common.console.print(f"running the training steps on up to {args.rows} rows ...")
            problems += run_on_data(path, schema_path, args.data, args.rows)
    if problems:
        common.console.print(f"[red]{len(problems)} problem(s)[/red] in {path}:")
        for p in problems:
            common.console.print(f"  - {p.what}\n    [bold]fix[/bold]: {p.fix}")
        return 1
    common.console.print(f"[green]{path} keeps the contract[/green]")
    return 0


def new_command(args: argparse.Namespace) -> int:
    from google.protobuf import text_format

    try:
        table = read_table(args.data)
    except (OSError, ValueError, ReplayError) as e:
        common.console.print(f"[red]cannot read {args.data}[/red]: {e}")
        return 1
    try:
        p = scaffold.plan(args.name, table, args.label, args.task, args.time_column)
    except scaffold.ScaffoldError as e:
        common.console.print(f"[red]{e}[/red]")
        return 1
    out = Path(args.dir or Path("models") / args.name)
    schema_path, module_path = out / "schema.pbtxt", out / "model.py"
    for f in (schema_path, module_path):
        if f.exists():
            common.console.print(f"[red]{f} exists[/red]: choose another --dir or remove it")
            return 1
    config = where.models_file_to_write(args.config)
    out.mkdir(parents=True, exist_ok=True)
    common.console.print(f"inferring the schema of {table.num_rows:,} rows with TFDV ...")
    schema = scaffold.infer_schema(table)
    schema_path.write_text(text_format.MessageToString(schema))
    module_path.write_text(scaffold.module_text(p, args.data))
    try:
        contract.check(module_path, schema)
        entry = scaffold.config_entry(p, table, schema_path, module_path, config.resolve().parent)
        scaffold.add_to_config(config, p.name, entry)
    except (contract.ContractError, scaffold.ScaffoldError, SettingsError) as e:
        common.console.print(f"[red]{e}[/red]")
        return 1
    common.console.print(
        f"[green]model {p.name}[/green] ({p.task}, label {p.label!r}"
        + (f", positive class {p.positive!r}" if p.positive else "")
        + f"; {len(p.numeric)} numeric, {len(p.strings)} string features)\n"
        f"  schema  {schema_path}  (review it: types, presence)\n"
        f"  module  {module_path}\n"
        f"  config  {config}\n"
        + (
            f"  labels  {p.unlabelled:,} of {p.rows:,} rows have no {p.label!r}: they stream as "
            "unlabelled examples (labels.source: stream) and their labels may come later on "
            f"ctrain.labels; training and evaluation use the {p.labelled:,} labelled\n"
            if p.unlabelled
            else ""
        )
        + (
            ""
            if p.time_column
            else f"  periods no time column: the rows are cut into windows of "
            f"{scaffold.sizes(p, table)['windows']['window_max_count']:,} in file order, "
            "each judged as a period\n"
        )
        + f"next: ctrain model check {module_path} --model {p.name} --data {args.data}\n"
        f"      ctrain demo --data {args.data} --model {p.name}"
    )
    return 0

"""The continuous-training pipeline in KFP v2 DSL (no `from __future__ import annotations`:
KFP reads component signatures at runtime).

Components are thin: each calls one pure function of ``services.trigger.steps``
(tests call the same functions directly). Data moves by path under the
artifact root, which both ``kfp.local`` and a cluster (shared bucket) can see;
every component writes into ``<artifact_root>/runs/<run_id>/<step>/``. The
last component writes ``result.json``, which the trigger reads whichever
backend ran the pipeline.
"""

from dataclasses import dataclass, field
from typing import Any

from kfp import dsl


@dataclass(frozen=True)
class ComponentImages:
    """Where components run on a cluster: image and extra packages per component."""

    base_image: str = "ctrain:latest"
    packages: dict[str, list[str]] = field(default_factory=dict)
    trainer_gpus: int = 0


STEPS = ("gather", "validate", "transform", "train", "evaluate", "publish")


def build_pipeline(images: ComponentImages | None = None) -> Any:
    """Return the pipeline function, with images/packages bound at build time."""
    images = images or ComponentImages()

    def component(name: str) -> Any:
        return dsl.component(
            base_image=images.base_image,
            packages_to_install=images.packages.get(name, []),
            install_kfp_package=False,
        )

    @component("gather")
    def gather(run_dir: str, windows_json: str, eval_json: str, labels_json: str = "") -> str:
        import json

        from services.trigger.isolate import run_step

        out = run_step(
            "gather",
            window_uris=json.loads(windows_json),
            eval_uris=json.loads(eval_json),
            out_dir=f"{run_dir}/gather",
            labels_json=labels_json,
        )
        return json.dumps(out)

    @component("validate")
    def validate(run_dir: str, gathered: str, schema_path: str, blocking_json: str) -> str:
        import json

        from services.trigger.isolate import run_step

        data = json.loads(gathered)
        out = run_step(
            "validate_data",
            data_uri=data["train"],
            schema_path=schema_path,
            out_dir=f"{run_dir}/validate",
            blocking=json.loads(blocking_json),
        )
        return json.dumps(out)

    @component("transform")
    def transform(
        run_dir: str,
        gathered: str,
        validated: str,
        schema_path: str,
        module_path: str,
        beam_args_json: str = "[]",
    ) -> str:
        import json

        from services.trigger.isolate import run_step

        data = json.loads(gathered)
        out = run_step(
            "transform",
            train_uri=data["train"],
            eval_uri=data["eval"],
            schema_path=schema_path,
            module_path=module_path,
            out_dir=f"{run_dir}/transform",
            beam_args=json.loads(beam_args_json),
        )
        return json.dumps(out)

    @component("train")
    def train(
        run_dir: str, transformed: str, module_path: str, model_dir: str, epochs: int, task: str
    ) -> str:
        import json

        from services.trigger.isolate import run_step

        out = run_step(
            "train",
            transformed=json.loads(transformed),
            module_path=module_path,
            out_dir=model_dir,
            epochs=epochs,
            task=task,
        )
        return json.dumps(out, default=str)

    @component("evaluate")
    def evaluate(
        run_dir: str,
        gathered: str,
        trained: str,
        module_path: str,
        baseline_model: str,
        task: str,
        beam_args_json: str = "[]",
    ) -> str:
        import json

        from services.trigger.isolate import run_step

        data = json.loads(gathered)
        out = run_step(
            "evaluate",
            model_dir=json.loads(trained)["model"],
            eval_uri=data["eval"],
            module_path=module_path,
            out_dir=f"{run_dir}/evaluate",
            baseline_model_dir=baseline_model or None,
            task=task,
            beam_args=json.loads(beam_args_json),
        )
        return json.dumps(out, default=str)

    @component("publish")
    def publish(run_dir: str, trained: str, evaluated: str) -> str:
        import json
        import os

        result = {"trained": json.loads(trained), "evaluated": json.loads(evaluated)}
        tmp = f"{run_dir}/.result.json.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, default=str)
        os.replace(tmp, f"{run_dir}/result.json")
        return f"{run_dir}/result.json"

    @dsl.pipeline(name="ctrain-continuous-training")
    def ctrain_pipeline(
        run_dir: str,
        windows_json: str,
        eval_json: str,
        schema_path: str,
        module_path: str,
        model_dir: str,
        baseline_model: str = "",
        blocking_json: str = '["SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE"]',
        epochs: int = 3,
        task: str = "binary",
        labels_json: str = "",
        beam_args_json: str = "[]",
    ) -> None:
        g = gather(
            run_dir=run_dir,
            windows_json=windows_json,
            eval_json=eval_json,
            labels_json=labels_json,
        )
        g.set_display_name("gather windows")
        v = validate(
            run_dir=run_dir, gathered=g.output, schema_path=schema_path, blocking_json=blocking_json
        )
        v.set_display_name("tfdv statistics and validation")
        t = transform(
            run_dir=run_dir,
            gathered=g.output,
            validated=v.output,
            schema_path=schema_path,
            module_path=module_path,
            beam_args_json=beam_args_json,
        )
        t.set_display_name("tf transform")
        tr = train(
            run_dir=run_dir,
            transformed=t.output,
            module_path=module_path,
            model_dir=model_dir,
            epochs=epochs,
            task=task,
        )
        tr.set_display_name("keras trainer")
        if images.trainer_gpus:
            tr.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(images.trainer_gpus)
        e = evaluate(
            run_dir=run_dir,
            gathered=g.output,
            trained=tr.output,
            module_path=module_path,
            baseline_model=baseline_model,
            task=task,
            beam_args_json=beam_args_json,
        )
        e.set_display_name("tfma evaluation and blessing")
        publish(run_dir=run_dir, trained=tr.output, evaluated=e.output).set_display_name("result")

    return ctrain_pipeline


def compile_pipeline(path: str, images: ComponentImages | None = None) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(images), package_path=path)
    return path

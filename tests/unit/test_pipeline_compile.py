from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.trigger.pipeline import STEPS, ComponentImages, compile_pipeline

pytestmark = pytest.mark.unit


def test_compiled_pipeline_loads_with_kfps_own_loader(tmp_path: Path) -> None:
    from kfp import components

    path = compile_pipeline(
        str(tmp_path / "p.yaml"),
        ComponentImages(
            base_image="registry.example/ctrain:1.2",
            packages={"train": ["extra-pkg==1.0"]},
            trainer_gpus=1,
        ),
    )
    loaded = components.load_component_from_file(path)
    assert loaded.name == "ctrain-continuous-training"
    spec = yaml.safe_load(Path(path).read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}" for s in STEPS}
    assert all(e["container"]["image"] == "registry.example/ctrain:1.2" for e in executors.values())
    train_cmd = " ".join(executors["exec-train"]["container"]["command"])
    assert "extra-pkg==1.0" in train_cmd
    assert executors["exec-train"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"run_dir", "windows_json", "eval_json", "module_path", "model_dir", "epochs"} <= set(
        params
    )

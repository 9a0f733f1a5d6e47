"""ModelServerConfig text protos, their validation, and version policy resolution.

No TensorFlow import here: ``model_server_config_pb2`` is a plain protobuf module, so
this file (and :mod:`ctrain.modelserver.manager`) stay importable and testable fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

from ctrain.modelserver.errors import failed_precondition, invalid_argument

DEFAULT_PLATFORM = "tensorflow"
SUPPORTED_PLATFORMS = frozenset({DEFAULT_PLATFORM})

__all__ = [
    "ModelConfig",
    "ModelServerConfig",
    "aspired_versions",
    "list_versions",
    "load_config_file",
    "parse_config_text",
    "single_model_config",
    "validate",
]


def parse_config_text(text: str) -> ModelServerConfig:
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise invalid_argument(f"Invalid protobuf file: {e}") from e
    return config


def load_config_file(path: str | os.PathLike[str]) -> ModelServerConfig:
    return parse_config_text(Path(path).read_text())


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """What ``--model_name/--model_base_path`` stand for: one model, policy latest 1."""
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = base_path
    entry.model_platform = DEFAULT_PLATFORM
    return config


def validate(config: ModelServerConfig) -> None:
    """ServerCore::ValidateModelConfigList, plus the platform check the adapters do."""
    if config.WhichOneof("config") not in (None, "model_config_list"):
        raise invalid_argument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in seen:
            raise invalid_argument(
                f"Illegal to list model {model.name} multiple times in config list"
            )
        seen.add(model.name)
        if not model.base_path or not _is_absolute(model.base_path):
            raise invalid_argument(
                f"Expected model {model.name} to have an absolute path or URI; "
                f"got base_path()={model.base_path}"
            )
        platform = model.model_platform or DEFAULT_PLATFORM
        if platform not in SUPPORTED_PLATFORMS:
            raise failed_precondition(f"PlatformConfigMap has no entry for platform {platform}")


def _is_absolute(path: str) -> bool:
    return "://" in path or os.path.isabs(path)


def _local_path(base_path: str) -> str:
    return base_path[len("file://") :] if base_path.startswith("file://") else base_path


def version_path(base_path: str, version: int) -> str:
    return os.path.join(_local_path(base_path), str(version))


def list_versions(base_path: str) -> list[int]:
    """Integer-named child directories of ``base_path`` (FileSystemStoragePathSource)."""
    root = _local_path(base_path)
    try:
        children = os.listdir(root)
    except OSError:
        return []
    versions = []
    for child in children:
        if child.isdigit() and os.path.isdir(os.path.join(root, child)):
            versions.append(int(child))
    return sorted(versions)


def aspired_versions(model: ModelConfig, on_disk: Iterable[int]) -> set[int]:
    """The versions a ServableVersionPolicy wants, given those present under base_path."""
    present = sorted(set(on_disk))
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(present)
    if choice == "specific":
        return set(policy.specific.versions) & set(present)
    num = policy.latest.num_versions if choice == "latest" else 1
    num = max(num, 1)
    return set(present[-num:])


def missing_specific_versions(model: ModelConfig, on_disk: Iterable[int]) -> set[int]:
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return set()
    return set(policy.specific.versions) - set(on_disk)

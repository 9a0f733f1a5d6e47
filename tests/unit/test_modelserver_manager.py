"""ctrain.modelserver's config and version/label state machine, with a fake loader.

No TensorFlow: the manager only sees the injected loader and version directories.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ctrain.modelserver import config as cfg
from ctrain.modelserver.errors import ServingError
from ctrain.modelserver.manager import ModelManager, State

pytestmark = pytest.mark.unit


def make_config(base: Path, policy: str = "", labels: dict[str, int] | None = None) -> str:
    label_text = "".join(
        f'version_labels {{ key: "{k}" value: {v} }} ' for k, v in (labels or {}).items()
    )
    return (
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        f'model_platform: "tensorflow" {policy} {label_text} }} }}'
    )


class Loader:
    """Loads instantly, except versions held by ``gate`` or listed in ``fail``."""

    def __init__(self) -> None:
        self.gate: dict[int, threading.Event] = {}
        self.fail: set[int] = set()

    def __call__(self, name: str, version: int, path: str) -> str:
        if version in self.gate:
            self.gate[version].wait(10)
        if version in self.fail:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"cannot load {path}")
        return f"{name}:{version}"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    for v in (1, 2, 3):
        (tmp_path / str(v)).mkdir()
    (tmp_path / "tmp-4").mkdir()  # not a version
    return tmp_path


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def manager(loader: Loader) -> Iterator[ModelManager]:
    m = ModelManager(loader, file_system_poll_wait_seconds=-1)
    m.start()
    yield m
    m.stop()


def states(m: ModelManager) -> dict[int, State]:
    return {s.version: s.state for s in m.model_status("m")}


def test_policies_pick_versions(base: Path) -> None:
    on_disk = cfg.list_versions(str(base))
    assert on_disk == [1, 2, 3]

    def pick(policy: str) -> set[int]:
        (model,) = cfg.parse_config_text(make_config(base, policy)).model_config_list.config
        return cfg.aspired_versions(model, on_disk)

    assert pick("") == {3}
    assert pick("model_version_policy { latest { num_versions: 2 } }") == {2, 3}
    assert pick("model_version_policy { all {} }") == {1, 2, 3}
    assert pick("model_version_policy { specific { versions: 1 versions: 7 } }") == {1}


def test_config_validation(base: Path) -> None:
    dup = make_config(base).replace("} }", '} config { name: "m" base_path: "/x" } }')
    with pytest.raises(ServingError, match="Illegal to list model m multiple times"):
        cfg.validate(cfg.parse_config_text(dup))
    with pytest.raises(ServingError, match="to have an absolute path"):
        cfg.validate(cfg.parse_config_text(make_config(Path("relative"))))
    with pytest.raises(ServingError) as e:
        cfg.parse_config_text("model_config_list { nonsense: 1 }")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_initial_load_then_latest_and_specific(manager: ModelManager, base: Path) -> None:
    manager.reload_config(cfg.parse_config_text(make_config(base)))  # waits: first config
    assert states(manager) == {3: State.AVAILABLE}
    assert manager.get_servable("m") == (3, "m:3")
    with pytest.raises(ServingError) as e:
        manager.get_servable("m", version=1)
    assert (e.value.code, e.value.message) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(m, 1)",
    )
    with pytest.raises(ServingError, match=r"Could not find version 1 of model m"):
        manager.model_status("m", version=1)
    with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(x\)"):
        manager.get_servable("x")


def test_labels_only_on_available_versions(
    manager: ModelManager, base: Path, loader: Loader
) -> None:
    specific = "model_version_policy { specific { versions: 1 versions: 2 } }"
    with pytest.raises(ServingError) as e:  # startup: nothing is available yet
        manager.reload_config(cfg.parse_config_text(make_config(base, specific, {"s": 1})))
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert manager.config is None

    manager.reload_config(cfg.parse_config_text(make_config(base, specific)))
    assert manager.wait_for_state("m", 2, State.AVAILABLE, 5)
    manager.reload_config(cfg.parse_config_text(make_config(base, specific, {"s": 1})))
    assert manager.get_servable("m", label="s") == (1, "m:1")

    # Add version 3 (held loading) and label it in the same reload: refused, nothing applied.
    loader.gate[3] = threading.Event()
    three = "model_version_policy { specific { versions: 1 versions: 2 versions: 3 } }"
    with pytest.raises(ServingError, match="version 3 of model m, which is not currently"):
        manager.reload_config(cfg.parse_config_text(make_config(base, three, {"s": 3})))
    assert 3 not in states(manager)

    # Step one of the rollout: load 3 (asynchronously), label unchanged.
    manager.reload_config(cfg.parse_config_text(make_config(base, three, {"s": 1})))
    assert states(manager)[3] in (State.START, State.LOADING)
    loader.gate[3].set()
    assert manager.wait_for_state("m", 3, State.AVAILABLE, 5)
    manager.reload_config(cfg.parse_config_text(make_config(base, three, {"s": 3})))
    assert manager.get_servable("m", label="s") == (3, "m:3")
    with pytest.raises(ServingError, match="Unrecognized servable version label: nope"):
        manager.get_servable("m", label="nope")


def test_allow_labels_for_unavailable_models(base: Path, loader: Loader) -> None:
    m = ModelManager(
        loader, allow_version_labels_for_unavailable_models=True, file_system_poll_wait_seconds=-1
    )
    m.start()
    try:
        specific = "model_version_policy { specific { versions: 1 versions: 2 } }"
        m.reload_config(cfg.parse_config_text(make_config(base, specific, {"s": 1})))
        assert m.get_servable("m", label="s")[0] == 1
        m.wait_for_state("m", 2, State.AVAILABLE, 5)
        # Moving an existing label still needs an available target.
        loader.gate[3] = threading.Event()
        three = "model_version_policy { specific { versions: 1 versions: 2 versions: 3 } }"
        with pytest.raises(ServingError, match="version 3 of model m"):
            m.reload_config(cfg.parse_config_text(make_config(base, three, {"s": 3})))
        # A new label may name a version that is still loading.
        m.reload_config(cfg.parse_config_text(make_config(base, three, {"s": 1, "next": 3})))
        loader.gate[3].set()
    finally:
        m.stop()


def test_unload_is_availability_preserving(
    manager: ModelManager, base: Path, loader: Loader
) -> None:
    one = "model_version_policy { specific { versions: 1 } }"
    manager.reload_config(cfg.parse_config_text(make_config(base, one)))
    loader.gate[2] = threading.Event()
    two = "model_version_policy { specific { versions: 2 } }"
    manager.reload_config(cfg.parse_config_text(make_config(base, two)))
    assert manager.wait_for_state("m", 2, State.LOADING, 5)
    assert states(manager)[1] == State.AVAILABLE  # still serving while 2 loads
    loader.gate[2].set()
    assert manager.wait_for_state("m", 1, State.END, 5)
    assert states(manager) == {2: State.AVAILABLE, 1: State.END}
    assert [s.version for s in manager.model_status("m")] == [2, 1]  # newest first


def test_failed_load_and_removed_model(manager: ModelManager, base: Path, loader: Loader) -> None:
    loader.fail.add(3)
    with pytest.raises(ServingError) as e:
        manager.reload_config(cfg.parse_config_text(make_config(base)))
    assert e.value.code == grpc.StatusCode.UNKNOWN
    assert "1 model(s) did not become available" in e.value.message
    (status,) = manager.model_status("m")
    assert status.state == State.END and status.error_code == grpc.StatusCode.NOT_FOUND

    loader.fail.clear()
    manager.reload_config(cfg.parse_config_text("model_config_list {}"))
    manager.reload_config(cfg.parse_config_text(make_config(base)))
    assert states(manager) == {3: State.AVAILABLE}  # re-aspired after leaving the config
    manager.reload_config(cfg.parse_config_text("model_config_list {}"))
    assert manager.wait_for_state("m", 3, State.END, 5)
    assert manager.loaded_versions() == {"m": []}


def test_new_version_directory_is_picked_up_by_polling(manager: ModelManager, base: Path) -> None:
    manager.reload_config(cfg.parse_config_text(make_config(base)))
    (base / "4").mkdir()
    manager.poll_now()
    assert manager.wait_for_state("m", 4, State.AVAILABLE, 5)
    assert manager.wait_for_state("m", 3, State.END, 5)

"""Versions, labels and their lifecycle: the part of TF Serving's ServerCore we mimic.

Pure Python (no TensorFlow, no network): the servable loader is injected, so this
state machine is unit-tested with a fake loader.

What it reproduces (``tensorflow_serving/model_servers/server_core.cc`` and the
AspiredVersionsManager behind it):

* Each configured model's base_path is polled (``file_system_poll_wait_seconds``);
  its version policy (``latest{num_versions}`` (default latest 1), ``specific``,
  ``all``) picks the *aspired* versions among the integer sub-directories.
* Aspired versions go START -> LOADING -> AVAILABLE (or END with the load error) on a
  loader thread, asynchronously to the reload that asked for them.
* Versions no longer aspired go UNLOADING -> END, availability-preserving: while an
  aspired version of the same model is still loading and none is available yet, the
  old one keeps serving. Models removed from the config unload entirely. END versions
  stay visible in the status (TF Serving's ServableStateMonitor keeps them).
* Labels are validated *before* the new versions are loaded (UpdateModelVersionLabelMap
  runs first in ReloadConfig): a label may only name an AVAILABLE version, else the
  whole reload fails with FAILED_PRECONDITION and nothing changes. With
  ``allow_version_labels_for_unavailable_models`` a *new* label may name any version,
  but moving an existing label still requires the target to be available.
* A reload returns once models *new to the config* are available (TF Serving waits for
  them); new versions of existing models load in the background. The first config
  waits for every model.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from ctrain.modelserver import config as cfg
from ctrain.modelserver.errors import (
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
    servable_not_found,
)

log = logging.getLogger("ctrain.modelserver")

LoadFn = Callable[[str, int, str], Any]
ListFn = Callable[[str], list[int]]


class State(enum.IntEnum):
    """tensorflow.serving.ModelVersionStatus.State values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclass
class _Version:
    version: int
    path: str
    state: State
    aspired: bool
    servable: Any = None
    error: ServingError | None = None
    unload_queued: bool = False


@dataclass
class _Work:
    kind: str  # "load" | "unload"
    model: str
    version: int
    record: _Version = field(repr=False)


class ModelManager:
    """Owns every model's versions, their states and the label map."""

    def __init__(
        self,
        load: LoadFn,
        *,
        allow_version_labels_for_unavailable_models: bool = False,
        file_system_poll_wait_seconds: float = 1.0,
        list_versions: ListFn = cfg.list_versions,
        unload: Callable[[Any], None] | None = None,
    ) -> None:
        self._load = load
        self._unload = unload
        self._list = list_versions
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._poll_wait = file_system_poll_wait_seconds
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._reload_lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._models: dict[str, cfg.ModelConfig] = {}
        self._config: cfg.ModelServerConfig | None = None
        self._labels: dict[str, dict[str, int]] = {}
        self._versions: dict[str, dict[int, _Version]] = {}
        self._work: deque[_Work] = deque()
        self._warned_empty: set[str] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._threads:
            return
        worker = threading.Thread(target=self._worker, name="modelserver-loader", daemon=True)
        poller = threading.Thread(target=self._poller, name="modelserver-fs-poll", daemon=True)
        self._threads = [worker, poller]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    # ------------------------------------------------------------------- config
    @property
    def config(self) -> cfg.ModelServerConfig | None:
        with self._lock:
            return self._config

    def reload_config(
        self, config: cfg.ModelServerConfig, *, wait_timeout: float | None = None
    ) -> None:
        """ServerCore::ReloadConfig. Raises ServingError; on error nothing is applied."""
        cfg.validate(config)
        with self._reload_lock:
            first = self._config is None
            wanted = {m.name: m for m in config.model_config_list.config}
            with self._lock:
                labels = self._compute_labels(wanted)
                added = set(wanted) if first else set(wanted) - set(self._models)
                self._models = wanted
                self._labels = labels
                self._config = config
            log.info("Adding/updating models.")
            self._reconcile_all()
            self.wait_until_available(added, timeout=wait_timeout)
            log.info("Finished reloading config")

    def _compute_labels(self, wanted: dict[str, cfg.ModelConfig]) -> dict[str, dict[str, int]]:
        new: dict[str, dict[str, int]] = {}
        for name, model in wanted.items():
            records = self._versions.get(name, {})
            for label, version in sorted(model.version_labels.items()):
                allow_any = False
                if self._allow_unavailable_labels:
                    existing = self._labels.get(name, {}).get(label)
                    allow_any = existing is None or existing == version
                record = records.get(version)
                if not allow_any and (record is None or record.state != State.AVAILABLE):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {name}, "
                        "which is not currently available for inference"
                    )
                new.setdefault(name, {})[label] = version
        return new

    def wait_until_available(self, models: Iterable[str], timeout: float | None = None) -> None:
        """ServerCore::WaitUntilModelsAvailable: some version of each model AVAILABLE."""
        names = sorted(set(models))
        if not names:
            return
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self._stopping.is_set() or not self._pending(names), timeout
            )
            if self._stopping.is_set():
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
            failures = self._failures(names)
            if not ok:
                pending = ", ".join(self._pending(names))
                raise ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"Timed out waiting for models to become available: {pending}",
                )
        if failures:
            raise ServingError(
                grpc.StatusCode.UNKNOWN,
                f"{len(failures)} model(s) did not become available: {{"
                + "".join(f"{f}, " for f in failures)
                + "}",
            )

    def _pending(self, names: list[str]) -> list[str]:
        pending = []
        for name in names:
            records = self._versions.get(name, {})
            if any(r.state == State.AVAILABLE for r in records.values()):
                continue
            aspired = [r for r in records.values() if r.aspired]
            if aspired and all(r.state == State.END for r in aspired):
                continue  # failed: reached END without becoming available
            pending.append(name)
        return pending

    def _failures(self, names: list[str]) -> list[str]:
        out = []
        for name in names:
            records = self._versions.get(name, {})
            if any(r.state == State.AVAILABLE for r in records.values()):
                continue
            for r in sorted(records.values(), key=lambda r: r.version):
                if r.aspired and r.state == State.END:
                    why = f" due to error: {r.error}" if r.error else ""
                    out.append(f"{{name: {name} version: {r.version}}}{why}")
        return out

    # --------------------------------------------------------- reconciliation
    def poll_now(self) -> None:
        """One file-system poll (what the poller thread does every period)."""
        self._reconcile_all()

    def _poller(self) -> None:
        if self._poll_wait < 0:
            return
        if self._poll_wait == 0:  # TF Serving: poll exactly once
            return
        while not self._stopping.wait(self._poll_wait):
            try:
                self._reconcile_all()
            except Exception:  # keep polling whatever one poll hit
                log.exception("file system poll failed")

    def _reconcile_all(self) -> None:
        with self._reconcile_lock:
            with self._lock:
                models = dict(self._models)
                names = set(models) | set(self._versions)
            listings = {name: self._list(m.base_path) for name, m in models.items()}
            with self._changed:
                for name in sorted(names):
                    model = self._models.get(name)
                    if model is not models.get(name):
                        continue  # a reload replaced it meanwhile; its own pass handles it
                    self._reconcile_model(name, model, listings.get(name, []))
                self._changed.notify_all()

    def _reconcile_model(
        self, name: str, model: cfg.ModelConfig | None, on_disk: list[int]
    ) -> None:
        records = self._versions.setdefault(name, {})
        aspired: set[int] = set()
        if model is not None:
            aspired = cfg.aspired_versions(model, on_disk)
            if not aspired and name not in self._warned_empty:
                self._warned_empty.add(name)
                log.warning(
                    "No versions of servable %s found under base path %s. Did you forget "
                    "to name your leaf directory as a number (eg. '/1/')?",
                    name,
                    model.base_path,
                )
            elif aspired:
                self._warned_empty.discard(name)
            for missing in sorted(cfg.missing_specific_versions(model, on_disk)):
                log.debug("version %d of %s is configured but absent on disk", missing, name)
        for version in sorted(aspired):
            record = records.get(version)
            if record is None or (record.state == State.END and not record.aspired):
                assert model is not None
                record = _Version(
                    version=version,
                    path=cfg.version_path(model.base_path, version),
                    state=State.START,
                    aspired=True,
                )
                records[version] = record
                self._work.append(_Work("load", name, version, record))
                log.info("Aspiring version %d of servable %s", version, name)
            else:
                record.aspired = True
        for version, record in records.items():
            if version not in aspired:
                record.aspired = False
        self._schedule_unloads(name)

    def _schedule_unloads(self, name: str) -> None:
        records = self._versions.get(name, {})
        aspired = [r for r in records.values() if r.aspired]
        any_available = any(r.state == State.AVAILABLE for r in aspired)
        any_pending = any(r.state in (State.START, State.LOADING) for r in aspired)
        for record in records.values():
            if record.aspired or record.unload_queued:
                continue
            if record.state == State.AVAILABLE and (any_available or not any_pending):
                record.unload_queued = True
                self._work.append(_Work("unload", name, record.version, record))

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopping.is_set() or bool(self._work))
                if self._stopping.is_set():
                    return
                work = self._work.popleft()
            try:
                if work.kind == "load":
                    self._do_load(work)
                else:
                    self._do_unload(work)
            except Exception:  # the loader thread must survive anything
                log.exception("%s of %s version %d failed", work.kind, work.model, work.version)

    def _do_load(self, work: _Work) -> None:
        record = work.record
        with self._changed:
            if record.state != State.START:
                return
            if not record.aspired:
                record.state = State.END
                self._changed.notify_all()
                return
            record.state = State.LOADING
            self._changed.notify_all()
        log.info("Loading servable version {name: %s version: %d}", work.model, work.version)
        servable: Any = None
        error: ServingError | None = None
        try:
            servable = self._load(work.model, work.version, record.path)
        except ServingError as e:
            error = e
        except Exception as e:  # noqa: BLE001 - any loader failure is the version's status
            error = ServingError(grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}")
        with self._changed:
            if error is None:
                record.servable = servable
                record.state = State.AVAILABLE
                log.info(
                    "Successfully loaded servable version {name: %s version: %d}",
                    work.model,
                    work.version,
                )
            else:
                record.error = error
                record.state = State.END
                log.error(
                    "Loading servable: {name: %s version: %d} failed: %s",
                    work.model,
                    work.version,
                    error,
                )
            self._schedule_unloads(work.model)
            self._changed.notify_all()

    def _do_unload(self, work: _Work) -> None:
        record = work.record
        with self._changed:
            if record.state != State.AVAILABLE:
                record.unload_queued = False
                return
            record.state = State.UNLOADING
            servable, record.servable = record.servable, None
            self._changed.notify_all()
        log.info("Unloading servable version {name: %s version: %d}", work.model, work.version)
        try:
            if self._unload is not None:
                self._unload(servable)
        finally:
            del servable
            with self._changed:
                record.state = State.END
                record.unload_queued = False
                self._changed.notify_all()
        log.info("Done unloading servable version {name: %s version: %d}", work.model, work.version)

    # ----------------------------------------------------------------- queries
    def resolve_version(self, name: str, version: int | None, label: str | None) -> int | None:
        """ServerCore::ServableRequestFromModelSpec: label -> version (None = latest)."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        if label is not None and version is not None:
            raise invalid_argument(
                f"Both model version ({version}) and model version label ({label}) "
                "cannot be supplied."
            )
        if label is None:
            return version
        with self._lock:
            found = self._labels.get(name, {}).get(label)
        if found is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return found

    def get_servable(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[int, Any]:
        """A servable handle: the requested version if AVAILABLE, else NOT_FOUND."""
        wanted = self.resolve_version(name, version, label)
        with self._lock:
            records = self._versions.get(name, {})
            if wanted is None:
                ready = [r for r in records.values() if r.state == State.AVAILABLE]
                if not ready:
                    raise servable_not_found(name, None)
                best = max(ready, key=lambda r: r.version)
                return best.version, best.servable
            record = records.get(wanted)
            if record is None or record.state != State.AVAILABLE:
                raise servable_not_found(name, wanted)
            return record.version, record.servable

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """GetModelStatusImpl::GetModelStatusWithModelSpec (versions newest first)."""
        if not name:
            raise invalid_argument("Missing model name in request.")
        wanted = self.resolve_version(name, version, label)
        with self._lock:
            records = self._versions.get(name, {})
            if wanted is not None:
                record = records.get(wanted)
                if record is None:
                    raise not_found(f"Could not find version {wanted} of model {name}")
                return [_status(record)]
            if not records:
                raise not_found(f"Could not find any versions of model {name}")
            return [_status(r) for r in sorted(records.values(), key=lambda r: -r.version)]

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._labels.get(name, {}))

    def loaded_versions(self) -> dict[str, list[int]]:
        """AVAILABLE versions per configured-or-known model."""
        with self._lock:
            return {
                name: sorted(v for v, r in records.items() if r.state == State.AVAILABLE)
                for name, records in self._versions.items()
            }

    def wait_for_state(
        self, name: str, version: int, state: State, timeout: float | None = None
    ) -> bool:
        """Block until ``version`` of ``name`` reaches ``state`` (tests and tools)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (
                    (r := self._versions.get(name, {}).get(version)) is not None
                    and r.state == state
                ),
                timeout,
            )


def _status(record: _Version) -> VersionStatus:
    if record.error is not None:
        return VersionStatus(record.version, record.state, record.error.code, record.error.message)
    return VersionStatus(record.version, record.state)

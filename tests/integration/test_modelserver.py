"""The TF-Serving stand-in (ctrain.modelserver) as a real process, over gRPC and REST.

A tiny real SavedModel (two versions with different weights) is served by
``python -m ctrain.modelserver``; the tests drive it only through the public
protocols, as a client of tensorflow/serving would.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import ROOT
from tests.integration.support import free_port

pytestmark = pytest.mark.integration

MODEL = "tiny"
WEIGHTS = {1: (2.0, 0.5), 2: (-1.0, 0.25)}  # version -> (w, b)
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
STARTUP_TIMEOUT = 240.0


# ------------------------------------------------------------------ the model
def _save_tiny_model(path: Path, w: float, b: float) -> None:
    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(w, dtype=tf.float32)
            self.b = tf.Variable(b, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples: Any) -> dict[str, Any]:
            feats = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32)})
            return {"probabilities": tf.sigmoid(self.w * feats["x"] + self.b)}

    module = Tiny()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def expected(version: int, x: float) -> float:
    w, b = WEIGHTS[version]
    return 1.0 / (1.0 + math.exp(-(w * x + b)))


def example(x: float) -> bytes:
    ex = tf.train.Example(
        features=tf.train.Features(
            feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
        )
    )
    return bytes(ex.SerializeToString())


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / MODEL
    for version, (w, b) in WEIGHTS.items():
        _save_tiny_model(base / str(version), w, b)
    return base


def config_text(models: dict[str, tuple[Path, list[int], dict[str, int]]]) -> str:
    config = model_server_config_pb2.ModelServerConfig()
    for name, (base, versions, labels) in models.items():
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(base)
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.versions.extend(versions)
        for label, version in labels.items():
            entry.version_labels[label] = version
    return text_format.MessageToString(config)


# ----------------------------------------------------------------- the server
@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    log: Path
    base: Path
    channel: grpc.Channel

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def predict(self) -> prediction_service_pb2_grpc.PredictionServiceStub:
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @property
    def models(self) -> model_service_pb2_grpc.ModelServiceStub:
        return model_service_pb2_grpc.ModelServiceStub(self.channel)

    def reload(
        self, versions: list[int], labels: dict[str, int] | None = None, **extra: Any
    ) -> None:
        models = {MODEL: (self.base, versions, labels or {})}
        models.update(extra)
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(config_text(models), request.config)
        self.models.HandleReloadConfigRequest(request, timeout=120)

    def states(self, name: str = MODEL) -> dict[int, int]:
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = name
        resp = self.models.GetModelStatus(req, timeout=10)
        return {s.version: s.state for s in resp.model_version_status}

    def wait_states(
        self, want: Callable[[dict[int, int]], bool], timeout: float = 60
    ) -> dict[int, int]:
        """Poll GetModelStatus, as a TF Serving client does after a reload."""
        deadline = time.monotonic() + timeout
        states: dict[int, int] = {}
        while time.monotonic() < deadline:
            states = self.states()
            if want(states):
                return states
            time.sleep(0.05)  # poll interval
        raise AssertionError(f"states never matched: {states}\n{self.log.read_text()[-3000:]}")

    def reset(self) -> None:
        """Back to: version 1 only, no labels, no other model."""
        self.reload([1])
        self.wait_states(lambda s: s.get(1) == AVAILABLE and s.get(2, END) == END)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRAIN_")}
    return subprocess.Popen(
        [sys.executable, "-m", "ctrain.modelserver", *args],
        cwd=ROOT,
        env=env,
        stdout=open(log, "ab"),  # the child owns it
        stderr=subprocess.STDOUT,
    )


def _wait_ready(
    proc: subprocess.Popen[bytes], rest_url: str, channel: grpc.Channel, log: Path
) -> None:
    """Ready = REST answers the model status and the gRPC channel connects."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{rest_url}/v1/models/{MODEL}", timeout=1).status_code == 200:
                grpc.channel_ready_future(channel).result(timeout=5)
                return
        except (httpx.HTTPError, grpc.FutureTimeoutError):
            pass
        time.sleep(0.1)  # probe interval, not a readiness wait
    raise AssertionError(f"not ready after {STARTUP_TIMEOUT}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("modelserver")
    config = work / "models.config"
    config.write_text(config_text({MODEL: (model_base, [1], {})}))
    grpc_port, rest_port = free_port(), free_port()
    log = work / "server.log"
    proc = _spawn(
        [
            f"--model_config_file={config}",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            "--bind_address=127.0.0.1",
        ],
        log,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        _wait_ready(proc, f"http://127.0.0.1:{rest_port}", channel, log)
        yield Served(proc, grpc_port, rest_port, log, model_base, channel)
    finally:
        channel.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, f"unclean shutdown ({code}):\n{log.read_text()[-3000:]}"


@pytest.fixture
def served(server: Served) -> Served:
    server.reset()
    return server


# -------------------------------------------------------------------- helpers
def predict_request(
    xs: list[float], version: int | None = None, label: str | None = None, name: str = MODEL
) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto([example(x) for x in xs], dtype=tf.string))
    return req


def grpc_probs(s: Served, xs: list[float], **spec: Any) -> tuple[int, list[float]]:
    resp = s.predict.Predict(predict_request(xs, **spec), timeout=10)
    return resp.model_spec.version.value, tf.make_ndarray(resp.outputs["probabilities"]).tolist()


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def b64(x: float) -> dict[str, str]:
    return {"b64": base64.b64encode(example(x)).decode()}


def approx(values: list[float], version: int, xs: list[float]) -> bool:
    return values == pytest.approx([expected(version, x) for x in xs], rel=1e-5)


# ---------------------------------------------------------------------- tests
def test_status_of_configured_version(served: Served) -> None:
    assert served.states() == {1: AVAILABLE}
    body = httpx.get(f"{served.url}/v1/models/{MODEL}").json()
    assert body == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert httpx.get(f"{served.url}/v1/models/{MODEL}/versions/1").status_code == 200
    missing = httpx.get(f"{served.url}/v1/models/{MODEL}/versions/7")
    assert missing.status_code == 404
    assert missing.json() == {"error": f"Could not find version 7 of model {MODEL}"}


def test_grpc_predict_by_version_latest_and_output_filter(served: Served) -> None:
    xs = [0.0, 1.0, -2.0]
    version, probs = grpc_probs(served, xs, version=1)
    assert version == 1 and approx(probs, 1, xs)
    version, probs = grpc_probs(served, xs)  # no version: latest available
    assert version == 1 and approx(probs, 1, xs)

    req = predict_request([1.0], version=1)
    req.output_filter.append("probabilities")
    resp = served.predict.Predict(req, timeout=10)
    assert resp.model_spec.signature_name == "serving_default"
    assert list(resp.outputs) == ["probabilities"]

    req.output_filter[:] = ["nope"]
    err = rpc_error(lambda: served.predict.Predict(req, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in err.details()

    req = predict_request([1.0], version=1)
    req.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0]))
    err = rpc_error(lambda: served.predict.Predict(req, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("input size does not match signature: 2!=1")

    req = predict_request([1.0], version=1)
    req.model_spec.signature_name = "nope"
    err = rpc_error(lambda: served.predict.Predict(req, timeout=10))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == 'Serving signature key "nope" not found.'


def test_labels_need_available_versions_two_step_rollout(served: Served) -> None:
    # Load v2 and point "stable" at it in one step: refused, and nothing changes.
    err = rpc_error(lambda: served.reload([1, 2], {"stable": 2}))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == (
        f"Request to assign label to version 2 of model {MODEL}, "
        "which is not currently available for inference"
    )
    assert served.states() == {1: AVAILABLE}

    # Step 1: load 1+2 with stable on the available version 1; loading is asynchronous.
    served.reload([1, 2], {"stable": 1})
    states = served.wait_states(lambda s: s.get(2) == AVAILABLE)
    assert states == {1: AVAILABLE, 2: AVAILABLE}
    assert grpc_probs(served, [1.0], label="stable")[0] == 1
    assert grpc_probs(served, [1.0])[0] == 2  # latest available

    # Step 2: v2 is available now, so the label may move.
    served.reload([1, 2], {"stable": 2, "canary": 1})
    version, probs = grpc_probs(served, [0.5], label="stable")
    assert version == 2 and approx(probs, 2, [0.5])
    assert grpc_probs(served, [0.5], label="canary")[0] == 1

    rest = httpx.post(
        f"{served.url}/v1/models/{MODEL}/labels/stable:predict", json={"instances": [b64(0.5)]}
    )
    assert rest.status_code == 200 and approx(rest.json()["predictions"], 2, [0.5])
    status = httpx.get(f"{served.url}/v1/models/{MODEL}/labels/canary").json()
    assert [s["version"] for s in status["model_version_status"]] == ["1"]

    err = rpc_error(lambda: grpc_probs(served, [0.5], label="nope"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "Unrecognized servable version label: nope"
    rest = httpx.post(
        f"{served.url}/v1/models/{MODEL}/labels/nope:predict", json={"instances": [b64(0.5)]}
    )
    assert rest.status_code == 400
    assert rest.json() == {"error": "Unrecognized servable version label: nope"}


def test_unloads_version_no_longer_configured(served: Served) -> None:
    served.reload([1, 2])
    served.wait_states(lambda s: s.get(2) == AVAILABLE)
    served.reload([2])
    assert served.wait_states(lambda s: s.get(1) == END) == {2: AVAILABLE, 1: END}

    err = rpc_error(lambda: grpc_probs(served, [1.0], version=1))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"Servable not found for request: Specific({MODEL}, 1)"
    rest = httpx.post(
        f"{served.url}/v1/models/{MODEL}/versions/1:predict", json={"instances": [b64(1.0)]}
    )
    assert rest.status_code == 404
    assert grpc_probs(served, [1.0])[0] == 2


def test_model_removed_from_config_is_unloaded(served: Served) -> None:
    # A new model: the reload returns once it is available (TF Serving waits for new models).
    served.reload([1], other=(served.base, [2], {}))
    assert served.states("other") == {2: AVAILABLE}
    version, probs = grpc_probs(served, [1.0], name="other")
    assert version == 2 and approx(probs, 2, [1.0])

    served.reload([1])
    deadline = time.monotonic() + 60
    while served.states("other") != {2: END}:
        assert time.monotonic() < deadline, served.states("other")
        time.sleep(0.05)  # poll interval while the version unloads
    err = rpc_error(lambda: grpc_probs(served, [1.0], name="other"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Servable not found for request: Latest(other)"


def test_rest_predict_row_and_columnar_forms(served: Served) -> None:
    served.reload([1, 2])
    served.wait_states(lambda s: s.get(2) == AVAILABLE)
    xs = [0.0, 1.5]
    for version in (1, 2):
        url = f"{served.url}/v1/models/{MODEL}/versions/{version}:predict"
        rows = httpx.post(url, json={"instances": [b64(x) for x in xs]})
        assert rows.status_code == 200, rows.text
        assert list(rows.json()) == ["predictions"]
        assert approx(rows.json()["predictions"], version, xs)

        named = httpx.post(url, json={"instances": [{"examples": b64(x)} for x in xs]})
        assert approx(named.json()["predictions"], version, xs)

        cols = httpx.post(url, json={"inputs": {"examples": [b64(x) for x in xs]}})
        assert cols.status_code == 200, cols.text
        assert list(cols.json()) == ["outputs"]
        assert approx(cols.json()["outputs"], version, xs)

        plain = httpx.post(url, json={"signature_name": "serving_default", "inputs": [b64(1.0)]})
        assert approx(plain.json()["outputs"], version, [1.0])

    latest = httpx.post(f"{served.url}/v1/models/{MODEL}:predict", json={"instances": [b64(1.0)]})
    assert approx(latest.json()["predictions"], 2, [1.0])

    url = f"{served.url}/v1/models/{MODEL}/versions/1:predict"
    bad = httpx.post(url, json={"instances": [b64(1.0)], "inputs": [b64(1.0)]})
    assert bad.status_code == 400 and "expecting only one of" in bad.json()["error"]
    bad = httpx.post(url, json={"something": 1})
    assert bad.status_code == 400 and bad.json() == {"error": "Missing 'inputs' or 'instances' key"}
    bad = httpx.post(url, json={"instances": [1.5]})
    assert bad.status_code == 400
    assert "is not of expected type: string" in bad.json()["error"]
    bad = httpx.post(url, content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"].startswith("JSON Parse error")


def test_unknown_model_is_not_found(served: Served) -> None:
    err = rpc_error(lambda: grpc_probs(served, [1.0], name="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Servable not found for request: Latest(nope)"
    err = rpc_error(lambda: grpc_probs(served, [1.0], name="nope", version=3))
    assert err.details() == "Servable not found for request: Specific(nope, 3)"
    err = rpc_error(lambda: served.states("nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Could not find any versions of model nope"

    status = httpx.get(f"{served.url}/v1/models/nope")
    assert status.status_code == 404
    assert status.json() == {"error": "Could not find any versions of model nope"}
    rest = httpx.post(f"{served.url}/v1/models/nope:predict", json={"instances": [b64(1.0)]})
    assert rest.status_code == 404
    assert rest.json() == {"error": "Servable not found for request: Latest(nope)"}
    assert httpx.get(f"{served.url}/v1/models/nope/metadata").status_code == 404
    malformed = httpx.post(f"{served.url}/v1/models/{MODEL}:explain", json={})
    assert malformed.status_code == 400
    assert malformed.json()["error"] == f"Malformed request: POST /v1/models/{MODEL}:explain"


def test_classify_and_regress(served: Served) -> None:
    xs = [0.0, 2.0]
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = MODEL
    creq.model_spec.version.value = 1
    for x in xs:
        creq.input.example_list.examples.add().ParseFromString(example(x))
    cresp = served.predict.Classify(creq, timeout=10)
    assert cresp.model_spec.version.value == 1
    for x, classes in zip(xs, cresp.result.classifications, strict=True):
        p = expected(1, x)
        assert [c.label for c in classes.classes] == ["0", "1"]
        assert [c.score for c in classes.classes] == pytest.approx([1 - p, p], rel=1e-5)

    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = MODEL
    for x in xs:
        rreq.input.example_list.examples.add().ParseFromString(example(x))
    rresp = served.predict.Regress(rreq, timeout=10)
    assert approx([r.value for r in rresp.result.regressions], 1, xs)

    empty = regression_pb2.RegressionRequest()
    empty.model_spec.name = MODEL
    err = rpc_error(lambda: served.predict.Regress(empty, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    url = f"{served.url}/v1/models/{MODEL}"
    body = {"examples": [{"x": x} for x in xs]}
    classified = httpx.post(f"{url}/versions/1:classify", json=body)
    assert classified.status_code == 200, classified.text
    for x, pairs in zip(xs, classified.json()["results"], strict=True):
        p = expected(1, x)
        assert [label for label, _ in pairs] == ["0", "1"]
        assert [score for _, score in pairs] == pytest.approx([1 - p, p], rel=1e-5)
    regressed = httpx.post(f"{url}:regress", json=body)
    assert regressed.status_code == 200, regressed.text
    assert approx(regressed.json()["results"], 1, xs)
    # JSON integers become int64 features, as in TF Serving: the float parse rejects them.
    ints = httpx.post(f"{url}:regress", json={"examples": [{"x": 1}]})
    assert ints.status_code == 400


def test_metadata(served: Served) -> None:
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = MODEL
    resp = served.predict.GetModelMetadata(req, timeout=10)
    assert resp.model_spec.version.value == 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sigs)
    default = sigs.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["examples"].dtype == tf.string.as_datatype_enum
    assert list(default.outputs) == ["probabilities"]

    rest = httpx.get(f"{served.url}/v1/models/{MODEL}/versions/1/metadata").json()
    assert rest["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    inputs = rest["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["examples"]["dtype"] == "DT_STRING"


def test_metrics_count_requests(served: Served) -> None:
    for _ in range(3):
        grpc_probs(served, [1.0], version=1)
    httpx.post(f"{served.url}/v1/models/{MODEL}:predict", json={"instances": [b64(1.0)]})
    text = httpx.get(f"{served.url}/monitoring/prometheus/metrics").text
    assert "ctrain_modelserver_requests_total" in httpx.get(f"{served.url}/metrics").text

    def value(prefix: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        assert lines, prefix
        return float(lines[0].rsplit(" ", 1)[1])

    grpc_ok = (
        'ctrain_modelserver_requests_total{api="predict",code="OK",model="tiny",'
        'protocol="grpc",version="1"}'
    )
    assert value(grpc_ok) >= 3
    rest_ok = (
        'ctrain_modelserver_requests_total{api="predict",code="OK",model="tiny",'
        'protocol="rest",version="1"}'
    )
    assert value(rest_ok) >= 1
    assert value('ctrain_modelserver_loaded_versions{model="tiny"}') == 1
    assert value(':tensorflow:serving:request_count{model_name="tiny",status="OK"}') >= 4
    assert 'ctrain_modelserver_request_latency_seconds_bucket{api="predict"' in text
    assert ':tensorflow:serving:request_latency_bucket{API="predict",entrypoint="GRPC"' in text


def test_labels_in_startup_config_need_the_flag(model_base: Path, tmp_path: Path) -> None:
    """TF Serving checks labels before the first load, so startup labels fail by default."""
    config = tmp_path / "models.config"
    config.write_text(config_text({MODEL: (model_base, [1], {"stable": 1})}))
    log = tmp_path / "server.log"
    proc = _spawn([f"--model_config_file={config}", f"--port={free_port()}"], log)
    assert proc.wait(timeout=STARTUP_TIMEOUT) == 1
    assert (
        "Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to "
        f"version 1 of model {MODEL}, which is not currently available for inference"
    ) in log.read_text()


# -------------------------------------------------------------------- latency
def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {"p50_ms": round(pick(0.50), 3), "p99_ms": round(pick(0.99), 3)}


def _time(fn: Callable[[], Any], n: int, warmup: int = 30) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return _percentiles(samples)


def test_predict_latency_batch_1(
    served: Served, model_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 500
    ex = example(0.5)
    loaded = tf.saved_model.load(str(model_base / "1"))
    fn = loaded.signatures["serving_default"]
    req = predict_request([0.5], version=1)
    stub = served.predict
    body = json.dumps({"instances": [{"b64": base64.b64encode(ex).decode()}]})
    url = f"{served.url}/v1/models/{MODEL}/versions/1:predict"
    with httpx.Client() as client:
        results = {
            "in_process_savedmodel": _time(lambda: fn(examples=tf.constant([ex])), n),
            "grpc_predict": _time(lambda: stub.Predict(req, timeout=10), n),
            "rest_predict": _time(
                lambda: client.post(
                    url, content=body, headers={"Content-Type": "application/json"}
                ),
                n,
            ),
        }
    with capsys.disabled():
        print(f"\nmodelserver predict latency, batch 1, n={n}: {json.dumps(results)}")
    for r in results.values():
        assert r["p50_ms"] < 1000

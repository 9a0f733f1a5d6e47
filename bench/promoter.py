"""Promoter benchmarks, on a real taxi SavedModel and the embedded TF-Serving stand-in.

1. approve -> ``stable`` serving the new version (copy, load beside the current
   version, AVAILABLE, smoke prediction, label move): p50 over N promotions.
   Target p50 <= 5 s.
2. Predict latency at batch 1 over gRPC and REST (p50/p99) beside calling the
   SavedModel in-process, same run. Target gRPC/in-process p50 ratio <= 2.

    python bench/promoter.py [--promotions 10] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctrain.devstack import free_port, modelserver_process, start_redis, wait_port  # noqa: E402
from services.promoter.auth import Identity  # noqa: E402
from services.promoter.core import Promoter, PromoterConfig  # noqa: E402
from services.promoter.serving import ServingClient  # noqa: E402
from shared.events import ModelCandidate, PromotionEvent  # noqa: E402
from shared.schema import example_spec, load_schema  # noqa: E402
from shared.shard import ShardWriter, arrow_schema, read_shard  # noqa: E402
from shared.tfexample import rows_to_examples  # noqa: E402

CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"
SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"
MODULE = ROOT / "examples" / "taxi" / "model.py"


def train_model(d: Path) -> tuple[str, str]:
    from pyarrow import csv

    from services.trigger import steps

    schema = arrow_schema(example_spec(load_schema(SCHEMA)))
    t = csv.read_csv(CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    t = t.select(schema.names).cast(schema)
    paths = {}
    for name, part in (("train", t.slice(0, 6000)), ("eval", t.slice(6000, 1500))):
        p = d / name / "data.parquet"
        p.parent.mkdir(parents=True)
        w = ShardWriter(schema, str(p))
        w.add(part.combine_chunks().to_batches()[0])
        w.finish()
        paths[name] = str(p)
    g = steps.gather([paths["train"]], [paths["eval"]], str(d / "gather"))
    tr = steps.transform(str(g["train"]), str(g["eval"]), str(SCHEMA), str(MODULE), str(d / "tf"))
    return str(steps.train(tr, str(MODULE), str(d / "model"), epochs=1)["model"]), paths["eval"]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def promotions(
    n: int, redis_url: str, grpc: str, base: str, model: str, ev: str
) -> list[float]:
    from redis.asyncio import Redis

    async def publish(_: PromotionEvent) -> None:
        return None

    p = Promoter(
        redis=Redis.from_url(redis_url),
        serving=ServingClient(grpc),
        config=PromoterConfig(serving_base=base),
        publish=publish,
        smoke=lambda c, k: rows_to_examples(read_shard(ev).slice(0, k)),
    )
    op = Identity("bench", "approver")
    out = []
    for i in range(n):
        c = ModelCandidate(
            candidate_id=f"bench-{i}",
            model="taxi",
            run_id=f"r{i}",
            model_uri=model,
            eval_uri="",
            blessed=True,
            eval_data_uri=ev,
        )
        await p.on_candidate(c)
        t0 = time.perf_counter()
        await p.approve(c.candidate_id, op, "bench")
        while (await p.store.get(c.candidate_id)).state not in ("serving", "failed"):  # type: ignore[union-attr]
            await asyncio.sleep(0.02)  # poll the candidate's state
        out.append(time.perf_counter() - t0)
        assert (await p.store.get(c.candidate_id)).state == "serving"  # type: ignore[union-attr]
    await p.serving.close()
    return out


def latency(grpc: str, rest: str, model_dir: str, examples: list[bytes], calls: int) -> None:
    import grpc as g
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    loaded = tf.saved_model.load(model_dir).signatures["serving_default"]
    one = examples[:1]
    inproc, grpc_t, rest_t = [], [], []
    ch = g.insecure_channel(grpc)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "taxi"
    req.model_spec.version_label = "stable"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto(one, dtype=tf.string))
    body = {"instances": [{"examples": {"b64": base64.b64encode(one[0]).decode()}}]}
    client = httpx.Client()
    for _ in range(20):  # warm all three paths
        loaded(examples=tf.constant(one))
        stub.Predict(req, timeout=10)
        client.post(f"http://{rest}/v1/models/taxi/labels/stable:predict", json=body)
    for _ in range(calls):
        t0 = time.perf_counter()
        loaded(examples=tf.constant(one))
        inproc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stub.Predict(req, timeout=10)
        grpc_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = client.post(f"http://{rest}/v1/models/taxi/labels/stable:predict", json=body)
        rest_t.append(time.perf_counter() - t0)
        assert r.status_code == 200
    for name, xs in (
        ("in-process SavedModel", inproc),
        ("gRPC Predict", grpc_t),
        ("REST :predict", rest_t),
    ):
        print(
            f"{name:22s} p50 {statistics.median(xs) * 1000:6.2f} ms  p99 {pct(xs, 0.99) * 1000:6.2f} ms"
        )
    print(
        f"gRPC / in-process p50 ratio: {statistics.median(grpc_t) / statistics.median(inproc):.2f} (target <= 2)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--promotions", type=int, default=10)
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="ctrain-bench-promoter-"))
    # TF Transform's Beam pipeline and Keras run in a child process: their native threads
    # crash an interpreter at exit (SIGSEGV in the final garbage collection, after the
    # figures are printed), and the figures here are not about training.
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        model, ev = pool.apply(train_model, (d,))
    redis = start_redis(d / "redis")
    gp, rp = free_port(), free_port()
    cfg = d / "models.config"
    cfg.write_text("model_config_list {\n}\n")
    (d / "serving").mkdir()
    ms = modelserver_process(cfg, gp, rp, d / "ms.log")

    try:
        wait_port("127.0.0.1", rp, 120, ms)
        times = asyncio.run(
            promotions(
                a.promotions, redis.address, f"127.0.0.1:{gp}", str(d / "serving"), model, ev
            )
        )
        print(
            f"approve -> stable on the new version, {len(times)} promotions: "
            f"p50 {statistics.median(times):.2f} s, max {max(times):.2f} s (target p50 <= 5 s)"
        )
        examples = rows_to_examples(read_shard(ev).slice(0, 4))
        latency(f"127.0.0.1:{gp}", f"127.0.0.1:{rp}", model, examples, a.calls)
    finally:
        ms.send_signal(signal.SIGTERM)
        ms.wait(timeout=30)
        os.kill(redis.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()

"""Steady Predict traffic through ``stable`` across a promotion and a rollback, on two
model server replicas: failed requests (target 0) and p99 latency while the label
moves beside the idle p99, same run.

Two embedded model servers (``python -m ctrain.modelserver``) serve a tiny real
SavedModel; the promoter (in this process, its real promotion and rollback code, one
client over both replicas) promotes version 1, then, while a client *process* sends
Predict requests for ``stable`` at a steady rate round-robin over both replicas (as a
client behind a Service would), promotes version 2 and rolls back to version 1.

    python bench/serving_load.py [--rate 200] [--idle-s 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "tiny"
WEIGHTS = {1: (2.0, 0.5), 2: (-1.0, 0.25)}


def save_model(path: Path, w: float, b: float) -> None:
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = tf.Variable(w), tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples: Any) -> dict[str, Any]:
            x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32)})
            return {"probabilities": tf.sigmoid(self.w * x["x"] + self.b)}

    m = Tiny()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})


def example(x: float) -> bytes:
    import tensorflow as tf

    f = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return bytes(tf.train.Example(features=tf.train.Features(feature={"x": f})).SerializeToString())


# ---------------------------------------------------------------- the client process
async def client(target: str, rate: float, seconds: float, out: str) -> None:
    """Predict on ``stable`` at ``rate`` per second for ``seconds``; one JSON line each."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from shared.tfserving import channel_target

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.version_label = "stable"
    req.inputs["examples"].dtype = 7  # DT_STRING
    req.inputs["examples"].tensor_shape.dim.add().size = 1
    req.inputs["examples"].string_val.append(example(1.0))
    channel = grpc.aio.insecure_channel(
        channel_target(target), options=[("grpc.lb_policy_name", "round_robin")]
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rows: list[dict[str, Any]] = []

    async def one(at: float) -> None:
        t0 = time.perf_counter()
        try:
            resp = await stub.Predict(req, timeout=10)
            rows.append(
                {"at": at, "ms": (time.perf_counter() - t0) * 1000, "ok": True,
                 "version": int(resp.model_spec.version.value)}
            )  # fmt: skip
        except grpc.aio.AioRpcError as e:
            rows.append(
                {"at": at, "ms": (time.perf_counter() - t0) * 1000, "ok": False,
                 "error": f"{e.code().name}: {e.details()}"}
            )  # fmt: skip

    start = time.time()
    tasks = []
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.time()))
        tasks.append(asyncio.create_task(one(time.time())))
    await asyncio.gather(*tasks)
    await channel.close()
    text = "\n".join(json.dumps(r) for r in rows)
    await asyncio.to_thread(Path(out).write_text, text)


# ---------------------------------------------------------------- the run
def p99(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def start_server(config: Path, work: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    from ctrain.devstack import free_port, modelserver_process, wait_port

    grpc_port, rest_port = free_port(), free_port()
    proc = modelserver_process(config, grpc_port, rest_port, work / f"{name}.log")
    wait_port("127.0.0.1", rest_port, 240, proc)
    return proc, f"127.0.0.1:{grpc_port}"


async def promote_and_roll_back(
    redis_url: str, target: str, work: Path, rate: float, idle_s: float
) -> dict[str, Any]:
    from redis.asyncio import Redis

    from services.promoter.auth import Identity
    from services.promoter.core import Promoter, PromoterConfig
    from services.promoter.serving import ServingFleet
    from shared.events import CandidateMetrics, ModelCandidate

    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    fleet = ServingFleet(target, config_file=str(work / "models.config"))
    promoter = Promoter(
        redis=redis,
        serving=fleet,
        config=PromoterConfig(serving_base=str(work / "serving"), policies={MODEL: "auto"}),
        publish=lambda e: asyncio.sleep(0),  # type: ignore[arg-type, return-value]
        smoke=lambda c, n: [example(1.0)],
    )

    def cand(version: int) -> ModelCandidate:
        return ModelCandidate(
            candidate_id=f"cand-v{version}", model=MODEL, run_id=f"run-{version}",
            model_uri=str(work / "candidates" / str(version)), eval_uri="-", blessed=True,
            failed_checks=[], metrics=CandidateMetrics(overall={"auc": 0.9}),
            windows=["w"], eval_window="w", reason="drift",
        )  # fmt: skip

    async def promote(version: int) -> tuple[float, float]:
        t0 = time.time()
        await promoter.on_candidate(cand(version))
        while (await fleet.label_version(MODEL, "stable")) != version:
            await asyncio.sleep(0.05)  # poll: the promotion runs as the promoter's task
        return t0, time.time()

    await promote(1)
    out = work / "client.jsonl"
    seconds = 4 * idle_s + 20
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", target, "--rate", str(rate),
        "--seconds", str(seconds), "--out", str(out), cwd=ROOT,
    )  # fmt: skip
    await asyncio.sleep(idle_s + 2)  # the client starts (imports) and runs idle
    promotion = await promote(2)
    await asyncio.sleep(idle_s)
    t0 = time.time()
    await promoter.rollback(MODEL, Identity("bench", "admin"), "bench: roll back", None)
    while (await fleet.label_version(MODEL, "stable")) != 1:
        await asyncio.sleep(0.05)
    rollback = (t0, time.time())
    await proc.wait()
    await fleet.close()
    await redis.aclose()
    text = await asyncio.to_thread(out.read_text)
    rows = [json.loads(x) for x in text.splitlines() if x]

    def within(w: tuple[float, float]) -> list[dict[str, Any]]:
        return [r for r in rows if w[0] <= r["at"] <= w[1]]

    busy = within(promotion) + within(rollback)
    idle = [r for r in rows if r not in busy]
    return {
        "requests": len(rows),
        "failed": sum(1 for r in rows if not r["ok"]),
        "errors": sorted({r["error"] for r in rows if not r["ok"]})[:5],
        "versions": sorted({r["version"] for r in rows if r["ok"]}),
        "idle_p99_ms": p99([r["ms"] for r in idle if r["ok"]]),
        "promotion_p99_ms": p99([r["ms"] for r in within(promotion) if r["ok"]]),
        "rollback_p99_ms": p99([r["ms"] for r in within(rollback) if r["ok"]]),
        "promotion_s": promotion[1] - promotion[0],
        "rollback_s": rollback[1] - rollback[0],
        "during_moves": len(busy),
    }


def run(rate: float, idle_s: float) -> dict[str, Any]:
    from ctrain.devstack import start_redis

    work = Path(tempfile.mkdtemp(prefix="ctrain-serving-load-"))
    for version, (w, b) in WEIGHTS.items():
        save_model(work / "candidates" / str(version), w, b)
    config = work / "models.config"
    config.write_text("model_config_list {\n}\n")
    redis = start_redis(work / "redis")
    servers = [start_server(config, work, f"replica-{i}") for i in (1, 2)]
    try:
        target = ",".join(addr for _, addr in servers)
        return asyncio.run(promote_and_roll_back(redis.address, target, work, rate, idle_s))
    finally:
        for proc, _ in servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        os.kill(redis.pid, signal.SIGTERM)
        os.waitpid(redis.pid, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--idle-s", type=float, default=4.0, help="idle time around each move")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.rate, args.seconds, args.out))
        return
    r = run(args.rate, args.idle_s)
    print(
        f"{r['requests']:,} Predict requests on stable over two replicas at {args.rate:g}/s: "
        f"{r['failed']} failed; versions answered {r['versions']}\n"
        f"p99 idle {r['idle_p99_ms']:.1f} ms; during the promotion ({r['promotion_s']:.1f} s) "
        f"{r['promotion_p99_ms']:.1f} ms; during the rollback ({r['rollback_s']:.1f} s) "
        f"{r['rollback_p99_ms']:.1f} ms"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()

"""Monitor benchmark: rows/s scored through serving gRPC on 10,000-row windows, beside
calling the same SavedModel in-process, in the same run. Target: gRPC >= 0.5 of in-process.

Both sides score the same serialized tf.Examples (encoding is timed apart and printed:
the monitor pays it once per window either way). gRPC goes through the monitor's own
``Scorer`` (batched Predict against the ``stable`` label of the embedded TF-Serving
stand-in, a few requests in flight); in-process calls the ``serving_default`` signature
with the same batch size. Medians over ``--repeat`` windows.

    python bench/monitor.py [--rows 10000] [--repeat 7] [--batch 2048] [--in-flight 2]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.promoter import train_model  # noqa: E402
from ctrain.devstack import free_port, modelserver_process, wait_port  # noqa: E402
from services.monitor.serving import Scorer  # noqa: E402
from shared.shard import read_shard  # noqa: E402
from shared.tfexample import rows_to_examples  # noqa: E402


def window_rows(eval_uri: str, rows: int) -> list[bytes]:
    import pyarrow as pa

    t = read_shard(eval_uri)
    reps = -(-rows // t.num_rows)
    t = pa.concat_tables([t] * reps).slice(0, rows)
    t0 = time.perf_counter()
    out = rows_to_examples(t)
    dt = time.perf_counter() - t0
    print(f"encoding {rows} rows to tf.Examples: {rows / dt:,.0f} rows/s (both sides pay it)")
    return out


def serve(d: Path, model_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    import shutil

    base = d / "serving" / "taxi"
    shutil.copytree(model_dir, base / "1")
    cfg = d / "models.config"
    cfg.write_text(
        f'model_config_list {{ config {{ name: "taxi" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } '
        'version_labels { key: "stable" value: 1 } } }\n'
    )
    gp, rp = free_port(), free_port()
    ms = modelserver_process(cfg, gp, rp, d / "ms.log")

    wait_port("127.0.0.1", rp, 120, ms)
    return ms, f"127.0.0.1:{gp}"


def in_process(model_dir: str, batch: int) -> object:
    import tensorflow as tf

    fn = tf.saved_model.load(model_dir).signatures["serving_default"]

    def score(examples: list[bytes]) -> int:
        n = 0
        for i in range(0, len(examples), batch):
            n += int(fn(examples=tf.constant(examples[i : i + batch]))["probabilities"].shape[0])
        return n

    return score


async def measure(
    address: str, model_dir: str, examples: list[bytes], a: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """Interleaved rounds (a noisy neighbour slows both sides alike): rows/s of each."""
    score = in_process(model_dir, a.batch)
    scorer = Scorer(address, batch_rows=a.batch, in_flight=a.in_flight)
    deadline = time.monotonic() + 120
    while True:  # the version loads after the server starts: probe until it answers
        try:
            await scorer.predict("taxi", examples[:8], "probabilities", label="stable")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # probe interval
    score(examples)  # type: ignore[operator]
    await scorer.predict("taxi", examples, "probabilities", label="stable")  # warm both
    g, p = [], []
    try:
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            assert score(examples) == len(examples)  # type: ignore[operator]
            p.append(len(examples) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            _, probs = await scorer.predict("taxi", examples, "probabilities", label="stable")
            g.append(len(examples) / (time.perf_counter() - t0))
            assert len(probs) == len(examples)
    finally:
        await scorer.close()
    return g, p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--in-flight", type=int, default=2)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="ctrain-bench-monitor-"))
    print("training a taxi model (one epoch) to score with ...")
    model, ev = train_model(d)
    examples = window_rows(ev, a.rows)
    ms, address = serve(d, model)
    try:
        g, p = asyncio.run(measure(address, model, examples, a))
        pm, gm = statistics.median(p), statistics.median(g)
        print(f"in-process SavedModel : median {pm:,.0f} rows/s over {len(p)} windows")
        print(f"serving gRPC (monitor): median {gm:,.0f} rows/s over {len(g)} windows")
        print(f"ratio gRPC / in-process: {gm / pm:.2f} (target >= 0.5)")
    finally:
        ms.send_signal(signal.SIGTERM)
        ms.wait(timeout=30)


if __name__ == "__main__":
    main()

"""Run one pipeline step in a child process that skips interpreter teardown.

TensorFlow Transform and TFMA leave native threads behind that can crash the
Python process at exit (a segfault *after* the work is done), which KFP would
record as a failed component. The child writes its result, flushes, and leaves
with ``os._exit``; its output and any traceback go to the component's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from services.trigger import warm


class StepFailed(RuntimeError):
    """The step raised (its traceback is in the log above) or the child died."""


def run_step(step: str, **kwargs: Any) -> Any:
    """``steps.<step>(**kwargs)`` in a child: forked from the trigger's warm step
    worker when the environment names one (``warm.ENV``), else a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix=f"ctrain-{step}-") as d:
        args, out = Path(d) / "args.json", Path(d) / "out.json"
        args.write_text(json.dumps(kwargs))
        code = None
        if os.environ.get(warm.ENV):
            try:
                code = warm.request(os.environ[warm.ENV], step, str(args), str(out))
            except warm.WorkerLost as e:
                raise StepFailed(f"step {step} failed: {e}") from e
        if code is None:
            code = subprocess.run(
                [sys.executable, "-m", "services.trigger.isolate", step, str(args), str(out)],
                check=False,
            ).returncode
        if code != 0 or not out.exists():
            raise StepFailed(f"step {step} failed (exit {code}); see the log above")
        return json.loads(out.read_text())


def main(step: str, args_path: str, out_path: str) -> None:
    try:
        from services.trigger import steps

        result = getattr(steps, step)(**json.loads(Path(args_path).read_text()))
        tmp = f"{out_path}.tmp"
        Path(tmp).write_text(json.dumps(result, default=str))
        os.replace(tmp, out_path)
        code = 0
    except BaseException:  # noqa: BLE001 - the traceback is the log; the exit code says it failed
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(*sys.argv[1:4])

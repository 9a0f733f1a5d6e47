"""``python -m services.trigger.run_local PARAMS.json``: one pipeline run on ``kfp.local``.

Runs in its own process (started by the local backend) so that the trigger's
event loop stays responsive and a run's log is kept in its run directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path


def main(params_path: str) -> int:
    import kfp.local

    from services.trigger.pipeline import build_pipeline

    with open(params_path) as f:
        params = json.load(f)
    run_dir = Path(params["run_dir"])
    with open(run_dir / "run.lock", "a") as lock:
        # One worker per run: a second one (started while the first was still being
        # handed over) waits for it, then finds its result instead of running again.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (run_dir / "result.json").exists():
            return 0
        # Written by the worker itself, so that a trigger that lost track of it
        # (cancelled mid-submit, restarted) finds it alive.
        (run_dir / "worker.pid").write_text(str(os.getpid()))
        kfp.local.init(
            runner=kfp.local.SubprocessRunner(use_venv=False),
            pipeline_root=f"{params['run_dir']}/kfp",
            raise_on_error=True,
        )
        build_pipeline()(**params)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

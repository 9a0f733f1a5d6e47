"""``python -m services.trigger.run_local PARAMS.json``: one pipeline run on ``kfp.local``.

Runs in its own process (started by the local backend) so that the trigger's
event loop stays responsive and a run's log is kept in its run directory.
"""

from __future__ import annotations

import json
import sys


def main(params_path: str) -> int:
    import kfp.local

    from services.trigger.pipeline import build_pipeline

    with open(params_path) as f:
        params = json.load(f)
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=f"{params['run_dir']}/kfp",
        raise_on_error=True,
    )
    build_pipeline()(**params)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

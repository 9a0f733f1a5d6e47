"""``ctrain pipeline compile`` and ``ctrain train``: the training pipeline and a run on request."""

from __future__ import annotations

import argparse
from typing import Any

from ctrain import client, devstack
from ctrain.commands import common


def _pipeline(args: argparse.Namespace) -> int:
    from services.trigger.pipeline import ComponentImages, compile_pipeline

    packages = {}
    for item in args.packages or []:
        step, _, pkgs = item.partition("=")
        packages[step] = [p for p in pkgs.split(",") if p]
    images = ComponentImages(
        base_image=args.base_image, packages=packages, trainer_gpus=args.trainer_gpus
    )
    compile_pipeline(args.output, images)
    common.console.print(f"wrote {args.output} (base image {args.base_image})")
    return 0


def _train(args: argparse.Namespace) -> int:

    model, _ = common.resolve(args, devstack.load_state())
    tc = client.trigger()
    try:
        body = tc.train(args.reason, model=model)
    finally:
        tc.close()
    if body["started"]:
        common.console.print(f"[green]run started[/green] {body['run_id']} ({body['reason']})")
        return 0
    common.console.print(f"[yellow]no run[/yellow]: {body['reason']}")
    return 1


def register(sub: Any) -> None:
    pl = sub.add_parser("pipeline", help="the continuous-training pipeline")
    pl.add_argument("action", choices=["compile"])
    pl.add_argument("-o", "--output", required=True, help="pipeline YAML to write")
    pl.add_argument("--base-image", default="ctrain:latest", help="image of every component")
    pl.add_argument(
        "--packages", action="append", help="STEP=pkg1,pkg2 extra packages for one component"
    )
    pl.add_argument("--trainer-gpus", type=int, default=0, help="GPUs for the trainer")
    pl.set_defaults(func=_pipeline)
    tr = sub.add_parser("train", help="ask the trigger for a training run now")
    tr.add_argument("--reason", default="manual request from ctrain train")
    common.model_option(tr)
    tr.set_defaults(func=_train)

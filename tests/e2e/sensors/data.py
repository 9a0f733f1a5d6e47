"""Machine-sensor readings the tests generate: a stream ctrain has never seen."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa

DAY = 86_400
START = 1_704_067_200  # 2024-01-01


def sensor_days(first: int, days: int, shifted: bool, seed: int) -> pa.Table:
    """``days`` days of readings; ``shifted`` moves temperature and the site mix. The label
    ``mode`` (how the machine fails) follows temperature and vibration."""
    rng = random.Random(seed)
    sites, weights = ["north", "south", "east"], [0.5, 0.3, 0.2]
    if shifted:
        weights = [0.15, 0.25, 0.6]
    rows: dict[str, list[Any]] = {k: [] for k in ("site", "temperature", "vibration", "ts")}
    rows["mode"] = []
    for d in range(first, first + days):
        for i in range(700):
            site = rng.choices(sites, weights)[0]
            temp = rng.gauss(72.0 + (9.0 if shifted else 0.0), 6.0)
            vib = rng.gauss(1.0, 0.3)
            heat = (temp - 72.0) / 6.0 + (0.5 if site == "east" else 0.0) + rng.gauss(0, 0.5)
            shake = (vib - 1.0) / 0.3 + rng.gauss(0, 0.5)
            mode = "none" if max(heat, shake) < 0.7 else "overheat" if heat > shake else "bearing"
            rows["mode"].append(mode)
            rows["site"].append(site)
            rows["temperature"].append(temp)
            rows["vibration"].append(vib)
            rows["ts"].append(START + d * DAY + int(i * DAY / 700))
    return pa.table(rows)

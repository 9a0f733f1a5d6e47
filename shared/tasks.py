"""The model tasks ctrain knows, and each one's headline metric: declared once here."""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = get_args(Task)
# The metric a task's quality policy, rollback watch and views lead with.
HEADLINE_METRIC: dict[str, str] = {"binary": "auc", "multiclass": "accuracy", "regression": "rmse"}

"""monitor: the serving model's quality on every judged window, realized and estimated."""

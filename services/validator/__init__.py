"""validator: window shard -> TFDV statistics, anomalies, drift and skew -> WindowValidated."""

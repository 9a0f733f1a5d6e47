"""ingest: examples -> checked rows -> tumbling windows -> Parquet shards -> WindowClosed."""

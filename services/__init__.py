"""ctrain services: each a pure core wrapped by thin Kafka/HTTP adapters."""

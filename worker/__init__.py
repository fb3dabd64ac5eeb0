"""recsys-worker: real-time personalisation on Kafka, Redis and Qdrant."""

__version__ = "0.1.0"

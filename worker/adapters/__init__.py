"""Adapters: translate external systems (RudderStack, Redis, Kafka, Qdrant) to the core."""

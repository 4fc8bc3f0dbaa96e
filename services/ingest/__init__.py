"""Ingest: HTTP -> validate -> publish to Kafka; nothing else."""

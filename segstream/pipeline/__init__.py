"""The streaming pipeline: sources -> stages -> sinks on the runtime's threads and bounded queues,
the Redis wire format, the run configuration (docs/layout.md: where each part is)."""

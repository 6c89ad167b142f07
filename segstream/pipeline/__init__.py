"""The streaming runtime: sources, stages, workers and queues, sinks, config, CLI."""

"""The stages between source and sinks, in the order frames meet them: preprocess, gating,
inference (the engine), postprocess, tracking, carry-over, publish."""

"""Models, checkpoints and the interchangeable inference engines behind one protocol."""

"""The command line: one module per command family, the layer above everything else."""

"""`python -m segstream.pipeline.wire --schema [FILE]`: the wire's JSON Schema (entries.main)."""

import sys

from segstream.pipeline.wire.entries import main

sys.exit(main())

"""`segstream serve`: the long-running camera service.

The pipeline (segstream.pipeline.streaming) does the video work; this package only looks at it
from outside: an HTTP control API over its streams (app.py), Prometheus metrics read at scrape
time (metrics.py), the live viewer (viewer.py), the streams remembered in Redis across restarts
(stream_book.py) and the command that wires it all (command.py). Nothing here touches tensors:
the viewer sees numpy images and each instance's boolean mask region.
"""

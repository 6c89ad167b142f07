"""The HTTP side of every long-running process (`serve`, `worker --http`, `run --http`).

The pipeline (segstream.pipeline.streaming) does the video work; this package only looks at it
from outside: one ASGI app (app.py) with the streams API, Prometheus metrics read at scrape time
(metrics.py), the probes and the live viewer (viewer.py), started by one module (http.py), over a
StreamsControl (control.py): the streams of one pipeline here, or of the whole fleet
(segstream.fleet.control, wired in by the command; the service never imports the fleet).
Nothing here touches tensors: the viewer sees numpy images and each instance's boolean mask region.
"""

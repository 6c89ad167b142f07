"""The synthetic "shapes" domain: circles, squares, triangles and 5-pointed stars on varied backgrounds.

scene       shapes and painting with exact visible masks
backgrounds flat, gradient, noise, clutter, texture and photograph backgrounds
dataset     training samples rendered on the fly at the network's input resolution; the shapes
            model's int8 calibration frames (handed to the engines by `segstream export` and the tests)
clip        H.264 clips with COCO ground truth (visible masks as RLE)
train       training the compact Mask R-CNN from scratch (`python -m segstream.shapes.train`)
evaluate    COCO mask/box AP of per-frame results (`python -m segstream.shapes.evaluate`)
model       the bundled checkpoint and loading it for direct use

Tools around the runtime: only the command line (train, eval, demo, export) and the tests import
this package; nothing that runs a camera does (the import contract in pyproject.toml, docs/layers.md).
"""

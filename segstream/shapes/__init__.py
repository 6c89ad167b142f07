"""The synthetic "shapes" domain: circles, squares, triangles and 5-pointed stars on varied backgrounds.

scene       shapes and painting with exact visible masks
backgrounds flat, gradient, noise, clutter, texture and photograph backgrounds
dataset     training samples rendered on the fly at the network's input resolution
clip        H.264 clips with COCO ground truth (visible masks as RLE)
train       training the compact Mask R-CNN from scratch (`python -m segstream.shapes.train`)
evaluate    COCO mask/box AP of per-frame results (`python -m segstream.shapes.evaluate`)
model       the bundled checkpoint and loading it for direct use
"""

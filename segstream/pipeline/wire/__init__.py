"""The Redis wire format, schema 1 (design.md section 3): validated models, the JSON entries,
the COCO RLE, and the consumer that reads them back."""

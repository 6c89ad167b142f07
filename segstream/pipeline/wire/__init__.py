"""The Redis wire format, schema 1 (design.md section 3): validated models, the JSON entries,
the COCO RLE, the consumer that reads them back, and the Redis link both sides use (connecting,
errors, key names, the one retry policy: redis_link.py). Nothing here imports the producer's sinks."""

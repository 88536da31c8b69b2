"""The image transform stage: measure, filter, resize and re-encode downloaded images.

``header.measure(body)`` reads an image's upright size from its header (microseconds; for every
image when no transform is asked). ``stage.transform(body, options)`` applies
``options.TransformOptions`` (img2dataset's resize modes, formats and filters) and returns a
``TransformResult``. Neither raises; ``transform`` does its pixel work in Pillow, which releases
the GIL, so call it from a worker thread, never on the event loop.

This package imports nothing at its top: the shard contract imports ``options`` alone.
"""

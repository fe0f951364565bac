"""The model runtime: pre-processing, decoders and ``ModelRunner`` (see docs/models.md).

- ``types``: the results (Detection, Landmarks, Classification, TextBox) and their JSON.
- ``preprocess``: BGR frame or region -> input tensor, and the way back to frame pixels.
- ``decoders``: raw outputs -> results, one module per manifest ``decoder.type``.
- ``runner``: ``open_runner`` verifies and loads an image; ``ModelRunner.infer`` runs it.
"""

"""The CAA core: where to act in a model (layers), which tokens (positions), the one prompt rule,
the steering hooks, vector extraction and the vector file format."""

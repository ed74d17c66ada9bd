"""Official-checkpoint conversion, one module per model whose authors released weights:
:mod:`.dstnet`, :mod:`.estrnn`, :mod:`.memdeblur` (key maps, layout and colour-order changes,
loaders). :func:`vdeblur_models.load_official` dispatches to them through the model registry."""

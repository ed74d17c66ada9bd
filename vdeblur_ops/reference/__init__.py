"""Pure-PyTorch ground truth, one module per op family, written from the papers.

Each function here is plain differentiable PyTorch and importable on its own
(``from vdeblur_ops.reference import haar``); the tests compare every kernel against it.
"""

"""Public functional API, one module per op family: input checks, backend choice, fake (meta)
implementations and autograd for the torch ops ``torch.ops.vdeblur.*``."""

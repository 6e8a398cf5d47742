"""Training: one loop (``loop``) over batches from any source (``sources``), the model and optimizer
each kind of input trains (``recipe``), the Ray Train worker (``worker``) and driver (``trainer``),
and the Ray Tune ASHA search (``search``)."""

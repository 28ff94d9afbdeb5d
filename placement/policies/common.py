"""Normalisers shared by the published policies (the FGD simulator's constants)."""
MAX_CPU = 128000  # milli-CPU of the largest node in the openb cluster
MAX_GPU = 8000  # milli-GPU of an 8-GPU node

"""One module per policy; each registers itself with ``placement.registry``."""

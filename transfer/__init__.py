"""fastgpu-ray transfer optimiser (being built)."""

"""fastgpu-ray: GPU placement for Ray (runtime API being built)."""

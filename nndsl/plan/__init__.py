"""The kernel plan: fused loop nests and GEMMs, memory layout, shared kernels."""

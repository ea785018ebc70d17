"""Fused LayerNorm and masked-softmax CUDA kernels, their torch ops and their CPU verification.

Importing this package is free of side effects and builds nothing (a PyPI
package is also called `kernels`, and Hugging Face transformers probes for
it). The ops live in `kernels.ops`; builds in `kernels.build`.
"""

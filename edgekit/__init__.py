"""edgekit: export, calibrate, benchmark and pick precisions for distilled PyTorch models on edge hardware.

The package imports nothing heavy at import time so that `edgekit --help` is instant; torch, ONNX Runtime
and TensorFlow are imported by the functions that need them.
"""

__version__ = "0.1.0"

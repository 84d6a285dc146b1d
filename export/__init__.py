"""Workstation side: explicit step graphs, ONNX export, bundles, TensorRT engine builds."""

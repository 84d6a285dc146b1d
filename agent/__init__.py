"""Everything that runs on the inspection station: frames, sources, segmentation, scoring.

Device side: imports numpy, opencv, onnxruntime (or tensorrt), pyrealsense2, paho-mqtt,
pydantic-settings and the standard library only. Never torch.
"""

__version__ = "0.1.0"  # of adgan-edge; pyproject.toml reads it from here

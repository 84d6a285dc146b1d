"""Frame -> object mask -> model input, exactly once for training, calibration and the device."""

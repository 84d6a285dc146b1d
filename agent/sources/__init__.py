"""Frame sources: folders (the paper's layout and raw captures), synthetic scenes, RealSense."""

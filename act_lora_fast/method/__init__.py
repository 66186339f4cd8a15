"""The Act-LoRA method: calibration data, profiling into LayerScores, selection, ranking stability."""

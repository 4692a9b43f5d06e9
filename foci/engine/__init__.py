"""The engine: owns models and devices and turns a GenerationTask into images (denoiser, devices, features)."""

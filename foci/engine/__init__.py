"""The engine: owns models and devices (engine), turns each image of a GenerationTask into a picture through the
recipe's steps (recipe, conditioning, denoiser, output), with optional features plugged in (features/)."""

"""Image-side steps of Input Image (§2.12, §2.13): masks, crops, fill, paste-back, tiling, the ESRGAN upscaler and
the inpaint head. Pure functions over numpy arrays / tensors; nothing here knows the engine."""

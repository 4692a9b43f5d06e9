"""Foci: an offline SDXL image generator that reproduces Fooocus."""

__version__ = "0.1.0"

"""Goophry on Twisted: a background task runner fed from Redis lists."""

__version__ = "1.2.0"

"""Motes: an open-source IoT data platform."""

__version__ = "0.1.0"

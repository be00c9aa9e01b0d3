"""confroom: a voice conferencing server driven by jambonz-style webhook applications."""

__version__ = "0.1.0"

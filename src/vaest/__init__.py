"""vaest: continuous valence/arousal estimation from face, behavior and voice."""

__version__ = "0.1.0"

"""Converters from state_dicts saved by the official Team RAS modules to vaest's reference models (strict:
every official tensor used, none missing). See ``docs/reference-audio-fusion.md`` for how to check them."""

from vaest.models.official.audio import audio_from_official
from vaest.models.official.raav import raav_from_official

__all__ = ["audio_from_official", "raav_from_official"]

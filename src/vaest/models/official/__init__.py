"""Load state_dicts saved from the official Team RAS modules into the vaest reference models (strict).

Each converter takes the official module's ``state_dict`` (or a checkpoint dict holding it under ``model``)
and the keyword arguments the official constructor was called with, and returns the vaest reference model
in eval mode. Every official tensor is used (weights are renamed; the fixed position tables are checked
against vaest's own), none is missing, otherwise a :class:`vaest.errors.ModelError` names the keys.
See ``docs/reference.md`` for how to call each one.
"""

from vaest.models.official.audio import audio_from_official
from vaest.models.official.behavior import behavior_from_official
from vaest.models.official.common import convert_state_dict
from vaest.models.official.dcmmoe import dcm_from_official
from vaest.models.official.face import face_from_official
from vaest.models.official.raav import raav_from_official

__all__ = ["audio_from_official", "behavior_from_official", "convert_state_dict", "dcm_from_official",
           "face_from_official", "raav_from_official"]

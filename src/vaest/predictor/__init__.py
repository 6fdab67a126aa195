"""The Python API of vaest: :class:`Predictor` turns a media file into per-frame valence/arousal in memory.

    >>> import vaest
    >>> p = vaest.Predictor()                 # zero-shot; or Predictor(model="demo_out/model", device="cuda")
    >>> res = p.predict("clip.mp4")           # models are loaded once, in __init__, and reused
    >>> res.frame                              # pandas DataFrame, one row per decoded frame
    >>> res.to_csv("clip.csv"); res.plot("clip.png")

Flow of one call, in one direction and in memory: decode the frames in batches (nothing holds all frames) ->
feed every extractor (:mod:`vaest.features.base`) -> apply each trained modality model (:mod:`vaest.apply`) ->
fuse -> smooth. The feature store is only an optional cache (``cache=FOLDER``), keyed by the media's identity.

The package, one room per concern: :mod:`.core` (the :class:`Predictor`: one file, in memory), :mod:`.people`
(the per-person path), :mod:`.steps` (what both paths share: fusion, the zero-shot voice, the metadata),
:mod:`.extract` (what is extracted, the cache identity), :mod:`.result` (:class:`PredictionResult` and the
post-processing into it), :mod:`.batch` (many files: :func:`predict_many`). Calls run down that list: the
Predictor inherits the per-person path and the shared steps, which never call back into :mod:`.core`.
A new way to run the same Predictor (a live source, a cluster) is a module beside :mod:`.batch` that calls
:meth:`Predictor.predict` or its steps.

Output columns (:attr:`PredictionResult.frame`):

- ``frame``: 1-based frame number; ``time``: the frame's own presentation time in seconds from the first frame
  (taken from the decoder, so variable-frame-rate videos are right; audio-only files: a 30 fps grid);
- ``valence``, ``arousal``: the final estimate, NaN where nothing was estimated (see ``source``);
- ``source``: how that frame's value was obtained:
  ``estimated`` = at least one modality had real input at this frame (a face seen, a usable audio window, a
  valid behavior segment) and the value is the model's (smoothed) output there;
  ``filled`` = no modality had input at this frame, and the value was bridged from the nearest estimated
  frames by post-processing (only with ``fill=True``, the reference's dense output);
  ``none`` = no value (NaN);
- ``face_valence``, ``face_arousal``, ``audio_...``, ``behavior_...``: each modality's raw (unsmoothed)
  per-frame output, NaN where that modality had no input or is not part of the model;
- ``weight_<m>``: the fusion's per-frame weight of modality ``m`` (with a fusion model, and zero-shot videos);
- ``person``, ``box_x0, box_y0, box_x1, box_y1`` (videos): the tracked person's id (stable within the video) and
  face box in pixels (empty where that person is not visible). ``Predictor(people=...)`` chooses the persons:
  ``main`` (default: one person throughout, one row per frame), ``all`` (one row per frame and person, ordered
  by frame, then person), ``left``, ``right`` or an id; each person's series uses only their own face, the
  voice attributed to them and (trained ``desc`` behavior model) the behavior of their own crop
  (``docs/persons.md``).

Logging: vaest logs through the ``vaest`` logger and adds no handler in library use, so nothing is printed
unless the application configures logging. Progress bars: ``Predictor(progress=False)`` (the default) shows
none; the CLI shows them unless ``--no-progress`` or ``VAEST_NO_PROGRESS=1``.
"""

from vaest.predictor.batch import expand_inputs, predict_many
from vaest.predictor.core import Predictor
from vaest.predictor.extract import media_key
from vaest.predictor.result import PredictionResult

__all__ = ["PredictionResult", "Predictor", "expand_inputs", "media_key", "predict_many"]

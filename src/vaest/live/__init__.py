"""Live valence/arousal from a camera, a network stream or a pipe (``vaest live``, ``Predictor.stream``).

- :mod:`vaest.live.source`: opening sources with PyAV, the reader thread, the bounded frame queue and its drop
  policy, the audio ring, faults and reconnection;
- :mod:`vaest.live.engine`: causal estimation with the predictor's extractors and mappings (zero-shot frame by
  frame; a trained bundle over a trailing window), :class:`LiveResult`;
- :mod:`vaest.live.record`: ``--out``: the ``predict`` CSV/JSON, valid at any moment;
- :mod:`vaest.live.stream`: :class:`LiveStream`, the loop that ties them (what ``Predictor.stream`` returns);
- :mod:`vaest.live.server`: ``--serve``: the live page over server-sent events.
"""

from vaest.live.engine import CAUSAL_NOTES, LiveResult
from vaest.live.source import SourceFault
from vaest.live.stream import DROP_POLICY, LiveStream

__all__ = ["CAUSAL_NOTES", "DROP_POLICY", "LiveResult", "LiveStream", "SourceFault"]

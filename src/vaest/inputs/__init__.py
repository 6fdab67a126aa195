"""The per-video inputs of the trained models, shared by applying (:mod:`vaest.apply`) and training
(:mod:`vaest.tasks`): face sequences (:mod:`.face`), behavior segment items (:mod:`.behavior`), audio windows and
the audio model's per-video application (:mod:`.audio`), the audio tokens fusion reads (:mod:`.audio_windows`),
fusion inputs and the fusion model's per-video application (:mod:`.fusion`), and the inference settings saved in
every run (:mod:`.settings`). Nothing here trains, and nothing here imports ``vaest.apply`` or ``vaest.tasks``.
"""

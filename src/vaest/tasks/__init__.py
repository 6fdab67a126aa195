"""Tasks: what a model is trained on. A task owns the data of its modality, the sampling of training batches,
the loss targets and the validation metric (frame-level CCC), and is handed to :func:`vaest.training.fit`."""

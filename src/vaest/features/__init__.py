"""Per-modality feature extractors and the feature store."""

"""Corpora on disk -> :class:`Video` records.

Three layouts are understood, detected by :func:`load_corpus`:

- Aff-Wild2 / ABAW (:mod:`vaest.corpus.affwild2`): annotation split folders, videos anywhere below the root.
- A CSV manifest (:mod:`vaest.corpus.manifest`): bring-your-own data, per-frame label files or one
  valence/arousal pair per clip, audio-only files allowed.
- A plain folder of media files (:mod:`vaest.corpus.folder`): no labels, for inference.

The records (:class:`Video`, :class:`Corpus`) live in :mod:`vaest.corpus.records` and the annotation file format
in :mod:`vaest.corpus.labels`; this package gives them with :func:`load_corpus`, which picks the layout.

Label/video length rule (documented, never a silent shift): label line k is frame k. When a label file has
more lines than the decoded video has frames, the extra lines are dropped; when it has fewer, the frames past
its end are marked invalid. Both cases log a warning naming the file.
"""

from __future__ import annotations

from pathlib import Path

from vaest.corpus.records import AUDIO_EXTS, Corpus, Video
from vaest.errors import CorpusError

__all__ = ["AUDIO_EXTS", "Corpus", "Video", "load_corpus"]


def load_corpus(root: "str | Path | Corpus", video_dirs: list[Path] | None = None) -> Corpus:
    """Open a corpus of any supported layout (see module docstring); an opened :class:`Corpus` is returned as is.

    Raises:
        CorpusError: the path does not exist or holds nothing vaest can read.
    """
    if isinstance(root, Corpus):
        return root
    root = Path(root)
    if not root.exists():
        raise CorpusError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            from vaest.corpus.manifest import load_manifest

            return load_manifest(root)
        from vaest.corpus.folder import load_files

        return load_files([root])
    from vaest.corpus.affwild2 import find_annotation_dirs, load_affwild2

    if find_annotation_dirs(root):
        return load_affwild2(root, video_dirs=video_dirs)
    from vaest.corpus.folder import load_folder

    corpus = load_folder(root)
    if not corpus.videos:
        raise CorpusError(f"{root}: no ABAW annotation folders (annotations/VA_Estimation_Challenge/...), "
                          "no manifest and no media files found")
    return corpus

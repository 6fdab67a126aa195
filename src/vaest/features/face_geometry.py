"""Face geometry shared by the face, mouth, person and behavior code: FaceMesh landmark groups, the per-batch
face observations one track hands to later extractors, box overlap, face crops and the crop window around a
person (:func:`person_window`, for the behavior clips).

Plain numpy (OpenCV only inside :func:`letterbox`); nothing here runs a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_LANDMARKS = 478

# FaceMesh landmark ids kept in the stored ``facetrack`` record (the full 478 travel only in ``shared``).
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    # inner lip contour: left corner 78 along the upper lip to the right corner 308, back along the lower lip
    "inner_lips": (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95),
    # outer lip contour, same order
    "outer_lips": (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146),
    # eye corners (outer, inner), upper and lower lid midpoints; iris centres (refined landmarks)
    "eyes": (33, 133, 159, 145, 263, 362, 386, 374, 468, 473),
    # brows: outer, middle, inner, for each side
    "brows": (70, 105, 107, 300, 334, 336),
    "nose_tip": (1,),
    "chin": (152,),
    # face oval corners: forehead top, the two cheeks (234, 454), chin
    "face_oval": (10, 234, 454),
}
LANDMARK_IDS: tuple[int, ...] = tuple(i for ids in LANDMARK_GROUPS.values() for i in ids)
LANDMARK_INDEX = np.asarray(LANDMARK_IDS, np.int64)  # LANDMARK_IDS as an index array into the 478 landmarks
EYE_OUTER = (33, 263)  # outer eye corners: the inter-ocular distance


@dataclass
class FaceObs:
    """Face observations of one video track for one frame batch (shared with later extractors).

    Attributes:
        boxes: (B, 4) float32 pixel boxes [x0, y0, x1, y1] in ``frames`` coordinates, NaN where no face.
        conf: (B,) float32 detector confidence (0 where no face).
        landmarks: (B, 478, 3) float32 FaceMesh landmarks: x, y in pixels and relative depth (z, same pixel
            scale as x); NaN where no face or the mesh failed.
        frames: (B, H, W, 3) uint8 RGB frames of the batch.
    """

    boxes: np.ndarray
    conf: np.ndarray
    landmarks: np.ndarray
    frames: np.ndarray

    @property
    def found(self) -> np.ndarray:
        """(B,) bool: a face box exists."""
        return np.isfinite(self.boxes).all(axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def square_box(box: np.ndarray, scale: float = 1.1, shift: float = -0.05) -> np.ndarray:
    """A square around a detector box: side = ``scale`` x its longer side, centre moved down by ``shift`` x side
    (negative: up, to take in the forehead that MediaPipe's brow-to-chin boxes leave out)."""
    side = scale * max(box[2] - box[0], box[3] - box[1])
    cx = 0.5 * (box[0] + box[2])
    cy = 0.5 * (box[1] + box[3]) + shift * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def crop_face(frame: np.ndarray, box: np.ndarray, scale: float = 1.1, shift: float = -0.05) -> np.ndarray | None:
    """The face crop of one frame: :func:`square_box` of the detector box, clipped to the frame.

    The crop framing matters a lot to small FER2013-trained networks: a square slightly larger than the box and
    moved up (forehead in, as in FER2013's faces) is stable across framings on real talking faces.
    """
    h, w = frame.shape[:2]
    b = square_box(box, scale, shift)
    x0, y0 = int(max(0, math.floor(b[0]))), int(max(0, math.floor(b[1])))
    x1, y1 = int(min(w, math.ceil(b[2]))), int(min(h, math.ceil(b[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return frame[y0:y1, x0:x1]


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Keep aspect, resize the longer side to ``size``, paste centred on a black ``size`` x ``size`` square.

    The reference GRADA preprocessing (new side = floor(old * size / longer side), offset = (size - new) // 2).
    """
    import cv2

    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, int(w * r)), max(1, int(h * r))
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.zeros((size, size) + img.shape[2:], dtype=img.dtype)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out[oy : oy + nh, ox : ox + nw] = small
    return out


def person_window(boxes: np.ndarray, frame_size: tuple[int, int], margin: float = 1.0,
                  below: float = 2.0) -> np.ndarray | None:
    """One fixed crop window [x0, y0, x1, y1] (int pixels) that holds a person over a clip.

    The union of the person's face boxes (T, 4) (NaN rows ignored), widened by ``margin`` face widths on each
    side and above by half a face height, and extended ``below`` face heights down (shoulders, hands), clipped
    to the frame. One window for the whole clip, so the person's own motion stays visible. None when the person
    is not visible on any frame of the clip.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    b = b[np.isfinite(b).all(1)]
    if not len(b):
        return None
    fw = float(np.median(b[:, 2] - b[:, 0]))
    fh = float(np.median(b[:, 3] - b[:, 1]))
    W, H = frame_size
    x0 = max(0, int(math.floor(b[:, 0].min() - margin * fw)))
    y0 = max(0, int(math.floor(b[:, 1].min() - 0.5 * fh)))
    x1 = min(W, int(math.ceil(b[:, 2].max() + margin * fw)))
    y1 = min(H, int(math.ceil(b[:, 3].max() + below * fh)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return np.array([x0, y0, x1, y1], np.int64)

"""A fiducial mark milled into the protective Pt cap, seen above the cross-section face.

Slice-and-view setups deposit a Pt cap on the top surface and mill a mark into it; the mark
does not change with depth, so drift-correction software registers on a region around it
instead of the changing microstructure. The phantom option ``fiducial`` (rows) replaces the top
rows of every slice with this band before the drift is applied.
"""

from __future__ import annotations

import numpy as np

from seglearn.synth.fields import smooth_noise

CAP_LEVEL = 0.80  # grey level of the Pt cap (before the face gradient, slice gain and noise)
MARK_LEVEL = 0.25  # grey level at the bottom of the milled lines
TEXTURE = 0.06  # amplitude of the fine grain of the deposited Pt
LINE_WIDTH = 3.0  # px


def _line_coverage(distance: np.ndarray, width: float) -> np.ndarray:
    """Share of a pixel covered by a line of ``width`` px at ``distance`` px from its axis (anti-aliased)."""
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)


def fiducial_band(height: int, width: int, seed: int) -> np.ndarray:
    """The z-invariant image of the cap with a milled "X" (grey levels on a 0..1 scale).

    An "X" of two anti-aliased lines ``LINE_WIDTH`` px wide, as high as the band (less 2 px at
    top and bottom), in the middle of the width, on a bright cap with a fine texture (correlation
    length 1 px) so that the band has sub-pixel structure along y and x everywhere. The texture
    is drawn from its own random stream (``[seed, 8]``), so switching the band on leaves every
    other random draw of the phantom as it was.

    Parameters
    ----------
    height, width : int
        Rows and columns of the band.
    seed : int
        The phantom's seed.

    Returns
    -------
    (height, width) float32 ndarray
    """
    own = np.random.default_rng([seed, 8])
    band = CAP_LEVEL + TEXTURE * smooth_noise((height, width), (1.0, 1.0), own)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    half = max((height - 4) / 2.0, 1.0)
    # the two diagonals of a square of side 2 * half centred on (cy, cx), as a signed distance
    dy, dx = yy - cy, xx - cx
    inside = (np.abs(dy) <= half + LINE_WIDTH / 2) & (np.abs(dx) <= half + LINE_WIDTH / 2)
    cover = np.maximum(_line_coverage(np.abs(dy - dx) / np.sqrt(2), LINE_WIDTH),
                       _line_coverage(np.abs(dy + dx) / np.sqrt(2), LINE_WIDTH)) * inside
    band = band * (1 - cover) + MARK_LEVEL * cover
    return band.astype(np.float32)

"""How good a fit is, in words a user can act on (no bpy, no numpy).

The backend's ``measured_chamfer_x100`` is a mean squared distance in the
target's normalised frame (bounding-box diagonal 1) times 100, so
``sqrt(chamfer_x100 / 100)`` is the typical distance between the fit and the
target as a fraction of the target's size: that is what the rating shows.

The bands are calibrated on fits of out-of-distribution furniture
(``training/data/ood.py``, 5 per category) against the demo library with and
without the target's category (docs/addon.md, "The match rating"): with its
category every fit was within 5.7% (median 3.5%), without it the median was
6.2%; no fit of a category the library has was beyond 6%.
"""

from __future__ import annotations

import math

# Typical distance (fraction of the target's size) up to which a fit is rated ...
CLOSE = 0.04  # ... "close": the shape is right, details may differ
FAIR = 0.06  # ... "fair": right kind of object, visible differences; beyond: "poor"


def typical_distance(chamfer_x100: float | None) -> float | None:
    """The fit's typical distance to the target as a fraction of its size."""
    if chamfer_x100 is None or chamfer_x100 < 0 or not math.isfinite(chamfer_x100):
        return None
    return math.sqrt(chamfer_x100 / 100.0)


def rating(chamfer_x100: float | None) -> str:
    """'close', 'fair', 'poor', or 'unmeasured' (image fits have no target points)."""
    distance = typical_distance(chamfer_x100)
    if distance is None:
        return "unmeasured"
    return "close" if distance <= CLOSE else "fair" if distance <= FAIR else "poor"


def describe(chamfer_x100: float | None) -> str:
    """One line: the rating and the scale it means, e.g. 'close (off by ~3% of its size)'."""
    distance = typical_distance(chamfer_x100)
    if distance is None:
        return "not measured (image target)"
    return f"{rating(chamfer_x100)} (off by ~{distance * 100:.0f}% of its size)"


def no_close_match(chamfers: list[float | None]) -> bool:
    """True when even the best measured candidate fits poorly."""
    measured = [c for c in chamfers if typical_distance(c) is not None]
    return bool(measured) and rating(min(measured)) == "poor"


# Colours of the residual view: green up to half the "close" band, yellow at the end of "fair", red from twice it.
_RAMP = ((CLOSE / 2, (0.10, 0.65, 0.20)), (FAIR, (0.95, 0.80, 0.10)), (2 * FAIR, (0.85, 0.10, 0.08)))


def residual_colour(residual_x100: float | None) -> tuple[float, float, float, float]:
    """RGBA of a part with that residual (``backend.residuals``: same units as the chamfer); grey when unmeasured."""
    distance = typical_distance(residual_x100)
    if distance is None:
        return (0.5, 0.5, 0.5, 1.0)
    for (low, a), (high, b) in zip(_RAMP, _RAMP[1:]):
        if distance <= high:
            t = min(max((distance - low) / (high - low), 0.0), 1.0)
            return (*(x + t * (y - x) for x, y in zip(a, b)), 1.0)
    return (*_RAMP[-1][1], 1.0)

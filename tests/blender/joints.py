"""Joint gaps of a fit in the scene, measured from the library index's own files (no add-on code),
for the Blender scripts in this folder."""

import json
import os

import numpy as np


def joint_gaps(parent, index: str) -> np.ndarray:
    """(J,) gaps in metres of the source's joints as the part objects place them.

    Measured in the fit's own frame (the parent's local axes, which carry the fit's yaw), where the
    parts are axis-aligned with the source."""
    with open(os.path.join(index, "manifest.json")) as handle:
        record = json.load(handle)["sources"][parent["rfit_source_index"]]
    with np.load(os.path.join(index, record["arrays"]), allow_pickle=False) as data:
        boxes, pairs, joints = data["boxes"], data["joint_pairs"], data["joint_points"]
        floor = float(data["min_half_size"])
    objs = sorted(parent.children, key=lambda o: o["rfit_part"])
    now = np.array([list(o.location) + [a * b for a, b in zip(o["rfit_source_box"][3:], o.scale)] for o in objs])
    ends = [
        now[pairs[:, s], :3]
        + (joints - boxes[pairs[:, s], :3]) / np.maximum(boxes[pairs[:, s], 3:], floor) * now[pairs[:, s], 3:]
        for s in (0, 1)
    ]
    return np.linalg.norm(ends[0] - ends[1], axis=1)

"""Training-side code: procedural data, joint training, baselines, evaluation.

Depends on ``backend``; nothing in ``backend`` or ``blender_addon`` imports it.
"""

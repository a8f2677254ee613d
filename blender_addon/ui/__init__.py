"""Blender UI: thin operators, panels, properties and preferences over ``api``."""

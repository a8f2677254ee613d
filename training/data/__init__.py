"""Procedural furniture data: shapes, files, point cloud and image targets."""

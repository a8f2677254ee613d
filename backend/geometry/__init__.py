"""Pure numpy geometry: part boxes, surface sampling, connectivity, symmetry."""

"""Joint training of retrieval and deformation (paper, Sec. 2.1)."""

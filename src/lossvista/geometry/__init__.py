"""Geometry beyond random planes: curves between minima, permutation alignment, absolute
two-weight planes, per-layer sensitivity and the topology of basins."""

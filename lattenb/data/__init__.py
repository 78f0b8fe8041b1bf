"""Bundled example data (a subset of the mlearn Cu set; see README.md here)."""

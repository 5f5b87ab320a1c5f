"""File formats lokal reads, at the bottom of the import graph: models and engines both use them."""

"""VisNet: visual search and visual recommendation for e-commerce catalogs."""

__version__ = "0.1.0"

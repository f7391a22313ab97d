"""CallFS: a REST API filesystem."""

__version__ = "0.1.0"

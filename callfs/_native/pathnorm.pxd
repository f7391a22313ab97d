# cython: language_level=3
# Request paths to canonical paths (API.md §5.1); see pathnorm.pyx.

cdef enum:
    MAX_SEGMENT = 255   # bytes of one canonical segment
    MAX_PATH = 4096     # bytes of the canonical path, leading '/' included

cpdef tuple normalize_url_path(bytes raw)
cpdef tuple normalize_path(str path)
cpdef tuple split_parent(str canonical)
cpdef list ancestors(str canonical)

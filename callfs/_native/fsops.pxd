# cython: language_level=3
# Renames the os module lacks, and opening beneath a directory without following links; see
# fsops.pyx.

cdef int _open(int dir_fd, str path, int flags, unsigned int mode, int how) except -1

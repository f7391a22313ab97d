# cython: language_level=3
# The Unix permission model in C; see perm.pyx.

cdef class Principal:
    cdef readonly str user        # the user ID the key authenticates as
    cdef readonly frozenset groups  # every group the user is in, its own-name group included
    cdef readonly bint admin      # root and internal-proxy: every check passes


cpdef bint allows(Principal who, object inode, int want)
cdef bint allows_bits(Principal who, long mode, str owner, str group, int want)
cpdef bint may_remove(Principal who, object parent, object entry)
cpdef tuple reach(Principal who, list chain)

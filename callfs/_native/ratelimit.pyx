# cython: language_level=3
"""Token buckets per client address, in memory shared by every worker of an instance (API.md §11).

The master maps the table (anonymous, MAP_SHARED) before it forks, so every worker, and every
worker started later to replace one, takes from the same buckets. A table can also be mapped
over a file, so that unrelated processes share it.

Layout: a 64-byte header (one word: magic and group count), then groups of 384 bytes. A group
is a lock word on its own cache line and 8 slots of 40 bytes:
`tag` (endpoint + 1; 0 when empty), the address as two big-endian words (IPv4 as
::ffff:a.b.c.d, so a dual-stack socket's mapped peer and a plain IPv4 peer are one client),
`tokens` (fixed point: TOKEN units are one token) and `last` (CLOCK_MONOTONIC ns of the last
refill; the monotonic clock is one clock for every process of a host). A key hashes to one
group; its bucket lives in one of the group's slots.

Refill is integer arithmetic: a bucket gains `rate` units per ns, up to its capacity, so the
answers are exact (two links.generate calls 10 ms apart both pass, 5 ms apart the second fails).

A key not in its group takes an empty slot, else a slot whose bucket has refilled to capacity
(forgetting a full bucket changes no answer; an entry idle for 10 minutes is always one), else
the slot refilled longest ago: under a flood of distinct addresses a bucket may be forgotten
early, and its client gets a full bucket again; nothing ever waits for room. The hash is not
keyed: a crafted collision can only make the table forget a bucket, which grants tokens, and an
attacker who owns the colliding addresses could use them directly.

The group lock is held for the scan of 8 slots. Its word holds the holder's pid: a waiter that
has spun for a while asks `kill(pid, 0)` and takes over the lock of a process that died holding
it (a slot it was writing may then hold a stray key or a forgotten bucket, never a wedge). A
bucket's state is written before its key, so a half-written slot never gives a client another's
depleted bucket.

The plain-Python specification is tests/unit/ratelimit_oracle.py.
"""
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport strerror
from posix.stat cimport fstat, struct_stat as stat_t
from posix.types cimport off_t

cdef extern from "sys/mman.h" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int PROT_READ, PROT_WRITE, MAP_SHARED, MAP_ANONYMOUS
    void* MAP_FAILED

cdef extern from *:
    """
    #include <arpa/inet.h>
    #include <errno.h>
    #include <pthread.h>
    #include <sched.h>
    #include <signal.h>
    #include <string.h>
    #include <sys/types.h>
    #include <time.h>
    #include <unistd.h>

    #define RL_GROUP_SLOTS 8
    #define RL_ENDPOINTS 2
    #define RL_TOKEN 1000000000LL   /* fixed-point units per token */
    #define RL_SPINS 2048           /* spins before asking whether the holder is alive */

    typedef struct { uint64_t tag, hi, lo; int64_t tokens, last; } rl_slot;
    typedef struct { uint64_t lock; uint64_t pad[7]; rl_slot slot[RL_GROUP_SLOTS]; } rl_group;

    /* tokens per second, which is units per ns; capacity in units; ns from empty to full */
    static const int64_t rl_rate[RL_ENDPOINTS] = {100, 10};
    static const int64_t rl_cap[RL_ENDPOINTS] = {1 * RL_TOKEN, 5 * RL_TOKEN};
    static const int64_t rl_fill[RL_ENDPOINTS] = {RL_TOKEN / 100, 5 * RL_TOKEN / 10};

    /* getpid() is a system call: keep it, and renew it in a forked child */
    static uint64_t rl_me;
    static void rl_after_fork(void) { rl_me = (uint64_t)getpid(); }
    static int rl_init_pid(void) {
        rl_me = (uint64_t)getpid();
        return pthread_atfork(NULL, NULL, rl_after_fork);
    }

    static inline void rl_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }

    static inline int rl_dead(uint64_t holder) {
        /* our own pid can only be a dead predecessor's: no process takes a lock twice */
        if (holder == rl_me) return 1;
        if (holder > 0x7fffffffULL) return 1;  /* not a pid: a corrupt word */
        return kill((pid_t)holder, 0) != 0 && errno == ESRCH;
    }

    static void rl_lock(uint64_t *word) {
        unsigned spins = 0;
        for (;;) {
            uint64_t holder = __atomic_load_n(word, __ATOMIC_RELAXED);
            if (holder == 0) {
                if (__atomic_compare_exchange_n(word, &holder, rl_me, 0,
                                                __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                    return;
                continue;
            }
            if (++spins < RL_SPINS) {
                rl_pause();
                continue;
            }
            spins = 0;
            if (rl_dead(holder)) {
                if (__atomic_compare_exchange_n(word, &holder, rl_me, 0,
                                                __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                    return;
                continue;
            }
            sched_yield();  /* alive and holding: preempted; let it run */
        }
    }

    static inline void rl_unlock(uint64_t *word) {
        __atomic_store_n(word, 0, __ATOMIC_RELEASE);
    }

    static inline uint64_t rl_mix(uint64_t x) {  /* splitmix64's finaliser */
        x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27; x *= 0x94d049bb133111ebULL;
        return x ^ (x >> 31);
    }

    static inline uint64_t rl_group_of(uint64_t groups, unsigned ep, uint64_t hi, uint64_t lo) {
        uint64_t h = rl_mix(hi ^ rl_mix(lo ^ ((uint64_t)(ep + 1) << 56)));
        return (uint64_t)(((unsigned __int128)h * groups) >> 64);
    }

    /* the bucket's tokens at `now`; a clock behind `last` refills nothing */
    static inline int64_t rl_refilled(unsigned ep, int64_t tokens, int64_t last, int64_t now) {
        if (now <= last) return tokens;
        if (now - last >= rl_fill[ep]) return rl_cap[ep];
        tokens += (now - last) * rl_rate[ep];
        return tokens < rl_cap[ep] ? tokens : rl_cap[ep];
    }

    static inline int rl_is_full(const rl_slot *s, int64_t now) {
        uint64_t ep = s->tag - 1;
        if (ep >= RL_ENDPOINTS) return 1;  /* a stray tag: free to reuse */
        return rl_refilled((unsigned)ep, s->tokens, s->last, now) >= rl_cap[ep];
    }

    /* Take one token from the key's bucket; the group's lock is held. */
    static int rl_take(rl_group *g, unsigned ep, uint64_t hi, uint64_t lo, int64_t now) {
        uint64_t tag = ep + 1;
        rl_slot *hit = NULL, *empty = NULL, *full = NULL, *stalest = NULL;
        for (int i = 0; i < RL_GROUP_SLOTS; i++) {
            rl_slot *s = &g->slot[i];
            if (s->tag == tag && s->hi == hi && s->lo == lo) { hit = s; break; }
            if (s->tag == 0) { if (empty == NULL) empty = s; continue; }
            if (empty != NULL) continue;
            if (full == NULL && rl_is_full(s, now)) full = s;
            if (stalest == NULL || s->last < stalest->last) stalest = s;
        }
        if (hit != NULL) {
            if (now > hit->last) {
                hit->tokens = rl_refilled(ep, hit->tokens, hit->last, now);
                hit->last = now;
            }
        } else {
            hit = empty != NULL ? empty : full != NULL ? full : stalest;
            hit->tokens = rl_cap[ep];   /* state first, key last */
            hit->last = now;
            hit->hi = hi;
            hit->lo = lo;
            hit->tag = tag;
        }
        if (hit->tokens >= RL_TOKEN) {
            hit->tokens -= RL_TOKEN;
            return 1;
        }
        return 0;
    }

    static inline uint64_t rl_be64(const unsigned char *b) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++) v = (v << 8) | b[i];
        return v;
    }

    /* An address's two words: IPv4 as ::ffff:a.b.c.d, an IPv6 zone (%eth0) dropped, "" as
       ::. -1 when it is not an IP address. */
    static int rl_parse(const char *text, Py_ssize_t size, uint64_t *hi, uint64_t *lo) {
        char buf[64];
        unsigned char raw[16];
        if (size == 0) { *hi = 0; *lo = 0; return 0; }
        if (size >= (Py_ssize_t)sizeof(buf) || memchr(text, 0, size) != NULL) return -1;
        memcpy(buf, text, size);
        buf[size] = 0;
        if (memchr(buf, ':', size) != NULL) {
            char *zone = memchr(buf, '%', size);
            if (zone != NULL) {
                if (zone[1] == 0) return -1;
                *zone = 0;
            }
            if (inet_pton(AF_INET6, buf, raw) != 1) return -1;
            *hi = rl_be64(raw);
            *lo = rl_be64(raw + 8);
            return 0;
        }
        if (inet_pton(AF_INET, buf, raw) != 1) return -1;
        *hi = 0;
        *lo = 0x0000ffff00000000ULL | ((uint64_t)raw[0] << 24) | ((uint64_t)raw[1] << 16)
              | ((uint64_t)raw[2] << 8) | raw[3];
        return 0;
    }

    /* 0 when the header word now holds `header` (written here, or found) */
    static inline int rl_claim_header(uint64_t *word, uint64_t header) {
        uint64_t found = 0;
        if (__atomic_compare_exchange_n(word, &found, header, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 0;
        return found == header ? 0 : -1;
    }

    static inline uint64_t rl_holder(uint64_t *word) {
        return __atomic_load_n(word, __ATOMIC_ACQUIRE);
    }

    static inline int64_t rl_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    """
    ctypedef struct rl_slot:
        uint64_t tag
        uint64_t hi
        uint64_t lo
        int64_t tokens
        int64_t last
    ctypedef struct rl_group:
        uint64_t lock
        rl_slot slot[8]
    int RL_GROUP_SLOTS
    int RL_ENDPOINTS
    int rl_init_pid()
    void rl_lock(uint64_t* word)
    void rl_unlock(uint64_t* word)
    uint64_t rl_group_of(uint64_t groups, unsigned ep, uint64_t hi, uint64_t lo)
    int rl_take(rl_group* g, unsigned ep, uint64_t hi, uint64_t lo, int64_t now)
    int rl_parse(const char* text, Py_ssize_t size, uint64_t* hi, uint64_t* lo)
    int rl_claim_header(uint64_t* word, uint64_t header)
    uint64_t rl_holder(uint64_t* word)
    int64_t rl_now()

# Endpoint ids, with their buckets (API.md §11): refill in tokens/s, capacity in tokens.
LINKS_GENERATE = 0  # POST /v1/links/generate: 100/s, capacity 1
DOWNLOAD = 1        # GET /download/{token}: 10/s, capacity 5
RATES = {LINKS_GENERATE: (100, 1), DOWNLOAD: (10, 5)}
TOKEN = 1_000_000_000  # fixed-point units per token, as `bucket` reports them

GROUP_SLOTS = 8
HEADER_BYTES = 64
GROUP_BYTES = sizeof(rl_group)
DEFAULT_SLOTS = 1 << 16
MAX_SLOTS = 1 << 26
cdef Py_ssize_t _HEADER_BYTES = HEADER_BYTES
cdef uint64_t MAGIC = 0x43465254  # "CFRT", beside the group count in the header's first word

assert GROUP_BYTES == 384
if rl_init_pid() != 0:
    raise OSError("pthread_atfork failed")


def table_bytes(Py_ssize_t slots=DEFAULT_SLOTS):
    """The size of a table of at least `slots` slots (rounded up to whole groups of 8)."""
    if slots < 1 or slots > MAX_SLOTS:
        raise ValueError(f"a rate-limit table has 1 to {MAX_SLOTS} slots")
    return HEADER_BYTES + (slots + GROUP_SLOTS - 1) // GROUP_SLOTS * GROUP_BYTES


cpdef long long monotonic_ns():
    """CLOCK_MONOTONIC in ns: the clock `allow` reads."""
    return rl_now()


cdef rl_group* _locate(RateLimiter table, int endpoint, str address, uint64_t* hi,
                       uint64_t* lo) except NULL:
    """The group that holds the key's bucket, and the key's address words."""
    cdef Py_ssize_t size
    cdef const char* text
    if endpoint < 0 or endpoint >= RL_ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint}")
    text = PyUnicode_AsUTF8AndSize(address, &size)
    if rl_parse(text, size, hi, lo) != 0:
        raise ValueError(f"not an IP address: {address!r}")
    return <rl_group*>(table.base + _HEADER_BYTES) + rl_group_of(table.groups, endpoint, hi[0],
                                                                 lo[0])


cdef class RateLimiter:
    """One instance's buckets: made before the workers fork (anonymous shared memory), or over
    `fd`, a file of `table_bytes(slots)` bytes, zeroed or already holding a table of that size."""

    def __cinit__(self, Py_ssize_t slots=DEFAULT_SLOTS, fd=None):
        self.base = NULL
        self.length = table_bytes(slots)
        self.groups = (self.length - HEADER_BYTES) // GROUP_BYTES
        cdef stat_t info
        cdef int flags = MAP_SHARED
        cdef int descriptor = -1
        if fd is None:
            flags |= MAP_ANONYMOUS
        else:
            descriptor = fd
            if fstat(descriptor, &info) != 0:
                raise OSError(errno, strerror(errno).decode())
            if info.st_size < <off_t>self.length:
                # Touching a mapped page past the end of the file would kill the process.
                raise ValueError(f"the table file holds {info.st_size} bytes; "
                                 f"{self.length} needed")
        cdef void* mem = mmap(NULL, self.length, PROT_READ | PROT_WRITE, flags, descriptor, 0)
        if mem == MAP_FAILED:
            raise OSError(errno, strerror(errno).decode())
        self.base = <char*>mem
        if rl_claim_header(<uint64_t*>self.base, (MAGIC << 32) | self.groups) != 0:
            raise ValueError("the file holds another table, or other data")

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.length)
            self.base = NULL

    @property
    def slots(self):
        return <Py_ssize_t>self.groups * GROUP_SLOTS

    cpdef bint allow(self, int endpoint, str address) except -1:
        """Take a token from `address`'s bucket for `endpoint`: False when it is empty (429)."""
        cdef uint64_t hi, lo
        cdef rl_group* group = _locate(self, endpoint, address, &hi, &lo)
        cdef int64_t now = rl_now()
        rl_lock(&group.lock)
        cdef int taken = rl_take(group, endpoint, hi, lo, now)
        rl_unlock(&group.lock)
        return taken

    cpdef bint allow_at(self, int endpoint, str address, long long now_ns) except -1:
        """`allow` with the clock given: `now_ns` on CLOCK_MONOTONIC's scale (not negative)."""
        cdef uint64_t hi, lo
        if now_ns < 0:
            raise ValueError("a monotonic time is not negative")
        cdef rl_group* group = _locate(self, endpoint, address, &hi, &lo)
        rl_lock(&group.lock)
        cdef int taken = rl_take(group, endpoint, hi, lo, now_ns)
        rl_unlock(&group.lock)
        return taken

    def bucket(self, int endpoint, str address):
        """(tokens in TOKEN units, last refill ns) of the key's bucket, or None when the table
        does not hold it: for tests and diagnostics."""
        cdef uint64_t hi, lo
        cdef rl_group* group = _locate(self, endpoint, address, &hi, &lo)
        cdef int i
        cdef rl_slot* s
        result = None
        rl_lock(&group.lock)
        for i in range(RL_GROUP_SLOTS):
            s = &group.slot[i]
            if s.tag == <uint64_t>(endpoint + 1) and s.hi == hi and s.lo == lo:
                result = (s.tokens, s.last)
                break
        rl_unlock(&group.lock)
        return result

    def group_of(self, int endpoint, str address):
        """The index of the group that holds the key's bucket (its lock word sits at
        HEADER_BYTES + index * GROUP_BYTES)."""
        cdef uint64_t hi, lo
        cdef rl_group* group = _locate(self, endpoint, address, &hi, &lo)
        return group - <rl_group*>(self.base + _HEADER_BYTES)

    def holder(self, Py_ssize_t index):
        """The pid holding group `index`'s lock, 0 when free."""
        if index < 0 or <uint64_t>index >= self.groups:
            raise IndexError(index)
        cdef rl_group* group = <rl_group*>(self.base + _HEADER_BYTES) + index
        return rl_holder(&group.lock)

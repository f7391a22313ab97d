"""Build of the native helpers: every extension is listed explicitly, compiled with -O2."""
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = ["pathnorm", "stream", "generations", "fsops", "readview", "httphead", "perm", "token",
          "ratelimit", "tally", "logsink"]
# Extensions that link a system library: token signs with OpenSSL's libcrypto; the log
# writer is a POSIX thread.
LIBRARIES = {"token": ["crypto"], "logsink": ["pthread"]}

extensions = [
    Extension(
        f"callfs._native.{name}",
        [f"callfs/_native/{name}.pyx"],
        extra_compile_args=["-O2"],
        libraries=LIBRARIES.get(name, []),
    )
    for name in NATIVE
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
    ),
)

"""Build of the native helpers: every extension is listed explicitly, compiled with -O2."""
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = ["pathnorm", "stream", "generations", "fsops", "readview", "httphead", "perm"]

extensions = [
    Extension(
        f"callfs._native.{name}",
        [f"callfs/_native/{name}.pyx"],
        extra_compile_args=["-O2"],
    )
    for name in NATIVE
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
    ),
)

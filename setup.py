"""The extension list and its Cython directives; everything else is in pyproject.toml."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DIRECTIVES = {"language_level": 3, "embedsignature": True, "cdivision": True}

extensions = [
    Extension(
        "packet_flow._io",
        ["ext/_io.pyx"],
        include_dirs=[numpy.get_include(), "ext"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("_GNU_SOURCE", "1"),
                       ("OPENSSL_SUPPRESS_DEPRECATED", "1")],
        libraries=["crypto"],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))

"""
The one part of the build that pyproject.toml cannot say: the optional C
extension that starts scripts (goophry_tx/process/_cspawn.c).

It is optional: where there is no C compiler or no Python headers the build
warns and goes on, and goophry_tx.process.libc_spawn calls posix_spawn
through ctypes instead.  The metadata stays in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "goophry_tx.process._cspawn",
            sources=["goophry_tx/process/_cspawn.c"],
            optional=True,
        )
    ]
)

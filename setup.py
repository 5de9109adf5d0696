"""Build the optional native kernel (imgcate/encoders/_rcf.cpp); the rest is in pyproject.toml.

The extension is optional: where it cannot be compiled the install still succeeds and the
encoder runs its JAX forward pass (imgcate/encoders/native.py says which path is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "imgcate.encoders._rcf",
            sources=["imgcate/encoders/_rcf.cpp"],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17"],
            # MSVC exports only PyInit__rcf by default; ctypes needs these too
            export_symbols=["PyInit__rcf", "rcf_abi_version", "rcf_supported", "rcf_pool"],
            optional=True,
        )
    ]
)

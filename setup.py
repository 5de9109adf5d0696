"""Packages, the shipped data and the optional native kernel; metadata is in pyproject.toml.

The data in ``data/`` (the Landsat scene and elevation model, with their provenance and
licence) go into the wheel as ``imgcate/data/`` (``imgcate.datasets`` finds them there, or in
``data/`` of a clone). The kernel extension (imgcate/encoders/_rcf.cpp) is optional: where it
cannot be compiled the install still succeeds and the encoder runs its JAX forward pass
(imgcate/encoders/native.py says which path is in use).
"""

from setuptools import Extension, find_packages, setup

setup(
    packages=[*find_packages(include=["imgcate", "imgcate.*"]), "imgcate.data.landsat"],
    package_dir={"imgcate.data": "data"},
    package_data={"imgcate.data.landsat": ["*.tif", "*.md", "*.txt", "*.csv", "*.gpkg", "*.py"]},
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
    ],
)

"""Package discovery for the `ttspo` mapping (the rest is in pyproject.toml).

pyproject's `packages.find` cannot prefix what it finds, so discovery lives here:
every package under builder/, trainer/ and sql/ is found (no list kept by hand)
and installed as ttspo.<name>; tests/ and bench/ are not packages of ttspo.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """The root package is the repository root: leave this script out of it."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("ttspo", "setup")]


STAGES = ("builder", "trainer", "sql")
found = find_packages(include=[f"{top}{tail}" for top in STAGES for tail in ("", ".*")])
setup(cmdclass={"build_py": BuildPy}, packages=["ttspo", *(f"ttspo.{name}" for name in found)])

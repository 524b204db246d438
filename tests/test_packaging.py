"""The package metadata: what ``pip install -e .`` reads, without screens of setuptools warnings."""

import tomllib
import warnings
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def test_metadata_reads_without_warnings():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), PYPROJECT)
    assert [str(w.message) for w in caught] == []
    assert dist.metadata.license_expression == "Apache-2.0"


def test_build_requires_a_setuptools_that_reads_spdx_licenses():
    requires = tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]
    (setuptools,) = [Requirement(r) for r in requires if Requirement(r).name == "setuptools"]
    assert Version("76.0") not in setuptools.specifier  # SPDX license strings came in setuptools 77
    assert Version("77.0") in setuptools.specifier

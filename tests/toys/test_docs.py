"""The examples in the toy lab's docstrings run and print what they show."""

from __future__ import annotations

import doctest

import lossvista.toys


def test_package_docstring_examples_run():
    result = doctest.testmod(lossvista.toys)
    assert result.attempted >= 3 and result.failed == 0

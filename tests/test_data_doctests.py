"""The examples in the data modules' docstrings run and print what they show."""

import doctest

import pytest

from sbjax.data import arrays, augment, batches


@pytest.mark.parametrize("module", [arrays, augment, batches])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

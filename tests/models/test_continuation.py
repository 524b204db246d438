"""The one rule by which step 2 continues step 1's KV cache, in both backends."""

import pytest

from sdrt.models.base import continuation


@pytest.mark.parametrize(
    ("second", "analysis", "fed", "expected"),
    [
        ([1, 2, 7, 8, 9, 5], [7, 8, 0], 3, ([9, 5], 2)),  # the stop token 0 is not what step 2 writes
        ([1, 2, 7, 8, 9, 5], [7, 8, 9], 2, ([9, 5], 2)),  # the last analysis token never went in
        ([1, 2, 6, 8, 9], [7, 8], 2, ([6, 8, 9], 0)),  # step 2 re-tokenized the analysis: start over
        ([1, 3, 7, 8], [7, 8], 2, None),  # step 2 does not start with step 1's prompt
        ([1, 2, 7, 8], [7, 8], 2, None),  # nothing after the analysis to predict an answer from
    ],
)
def test_continuation_keeps_what_the_cache_and_step_2_share(second, analysis, fed, expected):
    assert continuation([1, 2], second, analysis, fed) == expected

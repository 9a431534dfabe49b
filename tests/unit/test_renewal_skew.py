"""One renewal rule for user tokens and routes' own tokens (bff/tokens/user.py)."""

from __future__ import annotations

import pytest

from bff.tokens.user import renewal_skew


@pytest.mark.parametrize(
    ("skew", "lifetime", "renewable", "expected"),
    [
        (60, 300, True, 60),  # the configured skew
        (60, 100, True, 60),  # still shorter than the lifetime: kept
        (60, 60, True, 30),  # as long as the lifetime: every call would renew, so half
        (60, 10, True, 5),
        (60, 0, True, 60),  # lifetime unknown
        (60, 300, False, 0),  # nothing to renew with: used until it really expires
    ],
)
def test_renewal_skew(skew, lifetime, renewable, expected):
    assert renewal_skew(skew, lifetime, renewable) == expected

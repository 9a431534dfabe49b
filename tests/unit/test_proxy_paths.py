"""The proxy's path check, by example and by property."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bff.proxy import PathRefused, check_path


@pytest.mark.parametrize(
    "path",
    [
        b"/api/x",
        b"/api/x/y.json",
        b"/api/a%20b",
        b"/api/caf%C3%A9",
        b"/api/x;v=1",
        b"/api/.well-known/x",
        b"/api/..x",
        b"/api/x..",
    ],
)
def test_ordinary_paths_pass(path):
    check_path(path)


def _segments_after_decoding(raw: bytes) -> list[str]:
    text = raw.decode("latin-1")
    for _ in range(3):
        text = unquote(text)
    return text.replace("\\", "/").split("/")


@given(
    st.lists(
        st.sampled_from(["api", "x", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "", "%252e", ";", "a"]),
        min_size=1,
        max_size=8,
    )
)
def test_a_path_that_passes_cannot_climb_out_of_its_prefix(parts):
    raw = ("/api/" + "/".join(parts)).encode()
    try:
        check_path(raw)
    except PathRefused:
        return
    decoded = "/".join(_segments_after_decoding(raw))
    normalised = posixpath.normpath(decoded)
    assert normalised == "/api" or normalised.startswith("/api/"), (raw, normalised)
    assert ".." not in _segments_after_decoding(raw)

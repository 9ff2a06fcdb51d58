"""Byte sizes: what users type for --memory, and how measured bytes are printed."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.errors import BadInput
from advisor.units import format_bytes, parse_size


@pytest.mark.parametrize("text, expected", [
    ("512MiB", 512 * 1024**2),
    ("12GB", 12 * 1000**3),
    ("1e9", 10**9),
    ("0.5GiB", 1024**3 // 2),
    ("  2 kib ", 2048),
    ("2KiB", 2048),
    ("1024", 1024),
    ("1b", 1),
    ("1.5k", 1500),
    (".5MB", 500_000),
    ("3.", 3),
    ("2.5e3 kb", 2_500_000),
    ("1E-3 GB", 10**6),
    ("16 g", 16 * 1000**3),
    ("1TiB", 1024**4),
    ("+8MiB", 8 * 1024**2),
    ("18446744073709551616", 2**64),  # integers stay exact
    ("1" * 100, int("1" * 100)),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("", "cannot read"),
    ("   ", "cannot read"),
    ("banana", "cannot read"),
    ("GB", "cannot read"),
    ("1.5XB", "unknown unit 'XB'"),
    ("12 parsecs", "unknown unit"),
    ("1 2GB", "cannot read"),
    ("1,5GB", "cannot read"),
    ("0x10", "cannot read"),
    ("nan", "cannot read"),
    ("inf", "cannot read"),
    ("1e999", "too large"),
    ("1" * 5000, "too large"),
    ("0", "at least one byte"),
    ("0.4", "at least one byte"),
    ("1e-999", "at least one byte"),
    ("-0", "at least one byte"),
    ("-5GB", "must be positive"),
    ("5GB\n6GB", "cannot read"),
    ("١٢GB", "cannot read"),  # Arabic-Indic digits: not what anyone means by a size
])
def test_parse_size_rejects(text, fragment):
    with pytest.raises(BadInput) as caught:
        parse_size(text)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message and len(message) < 250


@pytest.mark.parametrize("value", [None, 12, 1.5, b"12GB"])
def test_parse_size_non_text_is_bad_input(value):
    with pytest.raises(BadInput):
        parse_size(value)


@pytest.mark.parametrize("n, expected", [
    (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (512 * 1024**2, "512 MiB"), (12 * 1000**3, "11.2 GiB"),
    (2 * 1024**5, "2048 TiB"), (1000 * 1024, "1000 KiB"), (-2048, "-2 KiB"), (float("nan"), "-"), (float("inf"), "-"), (None, "-"),
])
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parse_size_never_raises_anything_but_bad_input(text):
    try:
        value = parse_size(text)
    except BadInput as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(value, int) and value >= 1


size_like = st.builds(
    lambda sign, number, unit, pad: f"{pad}{sign}{number}{pad}{unit}{pad}",
    st.sampled_from(["", "+", "-"]),
    st.one_of(st.integers(0, 10**30).map(str), st.floats(0, 1e30, allow_nan=False).map(repr),
              st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"{f:e}")),
    st.sampled_from(["", "b", "kb", "KiB", "MB", "mib", "G", "GiB", "tb", "TiB", "XB", "parsec"]),
    st.sampled_from(["", " ", "\t"]),
)


@settings(max_examples=500, deadline=None)
@given(size_like)
def test_parse_size_on_size_like_text(text):
    """Text shaped like a size reaches the arithmetic: still a positive int or a BadInput."""
    try:
        value = parse_size(text)
    except BadInput:
        return
    assert isinstance(value, int) and value >= 1


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**400, 10**400))
def test_format_bytes_never_raises(n):
    text = format_bytes(n)
    assert isinstance(text, str) and text
    if isinstance(n, float) and not math.isfinite(n):
        assert text == "-"

"""The session cookie: a signed id only; rotation; tampering; attributes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bff.security.cookies import CookieCodec, Cookies, read_cookie
from bff.settings import load_settings
from tests.support import B64URL, SECRET

OLD = "old-key-old-key-old-key-old-key-old-key"
NEW = "new-key-new-key-new-key-new-key-new-key"


def settings(public_url="https://app.example.com", **extra):
    return load_settings(
        {
            "BFF_ISSUER": "https://idp.example.com",
            "BFF_CLIENT_ID": "c",
            "BFF_CLIENT_SECRET": "s",
            "BFF_PUBLIC_URL": public_url,
            "BFF_SECRET_KEY": SECRET,
            **extra,
        }
    )


def test_a_value_signed_with_a_retired_key_is_rejected_and_a_rotated_one_accepted():
    signed_old = CookieCodec((OLD,), "s").encode("abc")
    rotated = CookieCodec((NEW, OLD), "s")
    assert rotated.decode(signed_old) == "abc"  # still valid during rotation
    assert rotated.encode("abc") != signed_old  # but the first key signs now
    assert CookieCodec((NEW,), "s").decode(rotated.encode("abc")) == "abc"
    assert CookieCodec((NEW,), "s").decode(signed_old) is None  # retired


@given(st.text(min_size=1, max_size=60), st.integers(min_value=0, max_value=80), st.characters())
def test_any_tampered_cookie_is_rejected(value, position, replacement):
    codec = CookieCodec((SECRET,), "s")
    signed = codec.encode(value)
    i = position % len(signed)
    if signed[i] == replacement:
        return
    tampered = signed[:i] + replacement + signed[i + 1 :]
    assert codec.decode(tampered) is None, (signed, tampered)


def test_other_spellings_of_a_valid_signature_are_rejected():
    """Same signature bytes, other text: spare bits of the last character, padding,
    characters base64 decoding would skip. Each must be refused, not just most."""
    codec = CookieCodec((SECRET,), "s")
    for n in range(64):  # enough values that every last character group turns up
        signed = codec.encode(f"session-{n}")
        value, _, sig = signed.rpartition(".")
        last = B64URL.index(sig[-1])
        spare = [B64URL[last ^ k] for k in (1, 2, 3)]
        variants = [f"{value}.{sig[:-1]}{c}" for c in spare]
        variants += [f"{signed}=", f"{signed}==", f"{value}.{sig}.", f"{value}.{sig.replace('-', '+')}"]
        variants += [f"{value}.{sig[:5]}{junk}{sig[5:]}" for junk in ("!!!!", " ", "\n", "====")]
        for forged in variants:
            if forged != signed:
                assert codec.decode(forged) is None, (signed, forged)
        assert codec.decode(signed) == value


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60))
def test_round_trip(value):
    codec = CookieCodec((SECRET,), "s")
    assert codec.decode(codec.encode(value)) == value


def test_a_cookie_signed_for_another_purpose_is_not_a_session_cookie():
    login_binding = CookieCodec((SECRET,), "bff.login-binding").encode("x")
    assert CookieCodec((SECRET,), "bff.session").decode(login_binding) is None


def test_https_cookie_has_host_http_prefix_secure_httponly_lax():
    cookies = Cookies(settings())
    header = cookies.set_session("the-id")
    assert header.startswith("__Host-Http-bff_session=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=43200"):
        assert attribute in header
    assert "Domain" not in header
    value = header.split("=", 1)[1].split(";")[0]
    assert cookies.session_id(f"__Host-Http-bff_session={value}") == "the-id"
    assert cookies.session_id(f"__Host-bff_session={value}") is None  # the old name is not read
    assert cookies.new_login_binding()[1].startswith("__Host-Http-bff_login=")


def test_the_login_cookie_is_cleared_with_its_own_attributes():
    cookies = Cookies(settings())
    cleared = cookies.clear_login()
    assert cleared.startswith("__Host-Http-bff_login=")
    for attribute in ("Max-Age=0", "Path=/", "Secure", "HttpOnly"):
        assert attribute in cleared


def test_strict_samesite_and_plain_http_names():
    cookies = Cookies(settings("http://localhost:8080", BFF_COOKIE_SAMESITE="strict"))
    header = cookies.set_session("x")
    assert header.startswith("bff_session=") and "SameSite=Strict" in header and "Secure" not in header


def test_read_cookie_takes_the_first_of_duplicate_names():
    assert read_cookie("a=1; b=2; a=3", "a") == "1"
    assert read_cookie("ab=1", "a") is None

"""Every setting the code reads is documented in docs/configuration.md."""

from __future__ import annotations

import re

from bff.settings import SETTINGS_DOC
from tests.support import ROOT


def test_every_variable_read_by_the_code_is_in_settings_doc():
    source = "\n".join(p.read_text() for p in (ROOT / "bff").rglob("*.py"))
    used = set(re.findall(r"\"(BFF_[A-Z_]+)\"", source))
    assert used - set(SETTINGS_DOC) == set(), "add these to SETTINGS_DOC and docs/configuration.md"


def test_every_setting_is_in_the_configuration_reference():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `(BFF_[A-Z_]+)` \|", reference, flags=re.M))
    assert set(SETTINGS_DOC) - documented == set(), "document these in docs/configuration.md"
    assert documented - set(SETTINGS_DOC) == set(), "the reference lists settings the code does not have"


def test_spec_settings_keep_their_names():
    spec_names = {
        "BFF_ISSUER",
        "BFF_DISCOVERY_URL",
        "BFF_CLIENT_ID",
        "BFF_CLIENT_SECRET",
        "BFF_PUBLIC_URL",
        "BFF_SECRET_KEY",
        "BFF_REDIS_URL",
        "BFF_SESSION_STORE",
        "BFF_SCOPES",
        "BFF_API_ROUTES",
        "BFF_STATIC_DIR",
        "BFF_SESSION_IDLE_TIMEOUT",
        "BFF_SESSION_ABSOLUTE_TIMEOUT",
        "BFF_POST_LOGOUT_REDIRECT_URI",
        "BFF_HOST",
        "BFF_PORT",
    }
    assert spec_names <= set(SETTINGS_DOC)

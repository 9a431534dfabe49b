"""Real processes the tests talk to: an OIDC provider and an upstream API."""

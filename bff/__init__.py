"""bff: an OAuth 2.0 / OpenID Connect backend-for-frontend for single-page applications."""

__version__ = "0.2.0.dev0"

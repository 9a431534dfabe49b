"""The bff demo: a sample upstream API and the native stack (Redis, Keycloak, API, BFF)."""

"""OpenID Connect relying-party side: discovery, keys, the protocol client, JWT validation.

Nothing here sees a request object; routes/ and tokens.py call in.
"""

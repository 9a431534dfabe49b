"""Device Bound Session Credentials (W3C DBSC; SPEC "Device-bound sessions").

The browser keeps a private key (in a TPM where it has one) and proves possession of it to
obtain a short-lived bound cookie; once a session is bound, no use of it (but logout) works
without a valid bound cookie, so a session cookie copied to another machine dies with the
bound cookie it cannot renew.

    headers.py    the structured header fields (RFC 9651, through the http-sf library)
    proofs.py     the dbsc+jwt proofs (joserfc)
    cookie.py     the bound cookie: a signed, expiring value tied to the session and its key
    binding.py    DeviceBinding: offers, the gate, registration and refresh
    routes.py     POST /bff/dbsc/register and POST /bff/dbsc/refresh
"""

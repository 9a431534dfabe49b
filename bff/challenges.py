"""``WWW-Authenticate`` challenges (RFC 9110 §11.6.1), as upstreams send them to say why a
token was refused: RFC 6750 ``Bearer error="invalid_token"``, RFC 9449 ``DPoP
error="use_dpop_nonce"``.

No library the BFF already depends on parses this header (http.cookies and email.message
handle other grammars), so this is a small tokenizer of the RFC's grammar: a
comma-separated list of challenges, each ``auth-scheme [ token68 / #auth-param ]``, where an
auth-param is ``token BWS "=" BWS ( token / quoted-string )``. Anything that does not parse
yields no challenge rather than a guess.
"""

from __future__ import annotations

import re

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 - the RFC 9110 token grammar
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})\s*")
_SCHEME = re.compile(rf"\s*({_TOKEN})(?=\s|,|$)")
_TOKEN68 = re.compile(r"\s+[A-Za-z0-9._~+/-]+=*\s*(?=,|$)")


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """[(lower-case scheme, {lower-case param: value})] for each challenge in the header."""
    challenges: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(header):
        if header[pos] in ", \t":
            pos += 1
            continue
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            return challenges
        pos = scheme.end()
        params: dict[str, str] = {}
        token68 = _TOKEN68.match(header, pos)
        if token68 is not None and not _PARAM.match(header, pos):
            pos = token68.end()
        else:
            while True:
                param = _PARAM.match(header, pos)
                if param is None:
                    break
                params.setdefault(param.group(1).lower(), _unquote(param.group(2)))
                pos = param.end()
                if pos < len(header) and header[pos] == ",":
                    after = _SCHEME.match(header, pos + 1)
                    if after is not None and not _PARAM.match(header, pos + 1):
                        break  # the next challenge starts here
                    pos += 1
        challenges.append((scheme.group(1).lower(), params))
    return challenges


def challenge_error(headers: list[str], scheme: str) -> str | None:
    """The ``error`` of the first ``scheme`` challenge in any WWW-Authenticate header."""
    for header in headers:
        for name, params in parse_challenges(header):
            if name == scheme:
                return params.get("error")
    return None

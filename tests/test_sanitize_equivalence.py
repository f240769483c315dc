"""The sanitiser gives exactly what the frozen reference implementation gives, for any text.

tests/sanitize_reference.py is ``ccc_relay.policy.sanitize`` as it was before
its fast paths; every output field and the ``describe()`` sentences must match
it under every combination of options. The generated texts are built from the
fragments each rule looks for (and near misses), so the rules really run: the
test also checks that every kind of change turned up.
"""

from __future__ import annotations

import itertools
import string
from collections import Counter

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ccc_relay.credentials import PREFIX
from ccc_relay.policy.sanitize import SanitizeOptions, sanitize
from tests import sanitize_reference as reference

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
WORD = ALNUM + "_"
B64 = ALNUM + "+/="

OPTION_GRID = [
    (SanitizeOptions(enabled, paths, secrets), reference.SanitizeOptions(enabled, paths, secrets))
    for enabled, paths, secrets in itertools.product(
        (True, False), ("escape", "redact", "off"), (True, False)
    )
]

TERMINAL = [
    "\x1b[31m",
    "\x1b[1;38;5;196m",
    "\x1b[0m",
    "\x1b[12",
    "\x1b]8;;https://evil.example\x1b\\",
    "\x1b]0;title\x07",
    "\x1b]0;unterminated",
    "\x1bP+q544e\x1b\\",
    "\x1b_apc\x9c",
    "\x1b(B",
    "\x1b",
    "\x00",
    "\x07",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9b",
    "\x9c",
    "\r",
    "\r\n",
    "\n",
    "\t",
    "\u2028",
    "\u2029",
]
INVISIBLE = [
    "\u202e",
    "\u202c",
    "\u2066",
    "\u2069",
    "\u061c",
    "\u200e",
    "\u200b",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\u034f",
    "\u3164",
    "\ufe00",
    "\ufe0e",
    "\ufe0f",
    "\u200c",
    "\u200d",
    "\ufe0f\ufe0e",
    " \ufe0f",
    "\u200d\ufe0f",
    "a\u200db",
    "\u0645\u200c\u0645",
    "\U0001f600\u200d\u200d\U0001f600",
    "\U000e0041",
    "\U000e0067\U000e0062",
    "\U000e007f",
    "\U000e0100",
    "\U0001d173",
    "\U00013430",
    "\U0001bca0",
    "\U00013400",  # visible, but UTF-8 starts it as it starts the invisible ones
    "\U0001d140",
    "\U000e0200",
    "\U00013440",
    "\U000e0080",
    "\ud800",
    "\udfff",
    "\ud83d",
    "\udc00",
]
# Lone surrogates and tag characters, the rarest in generated text.
SMUGGLED = ["\ud800", "\udbff", "\udc00", "a\ud83d", "\U000e0068\U000e0069", "\U000e007f"]
SCRIPTS = [
    "\U0001f600",
    "\U0001f3fd",
    "\U0001f468\u200d\U0001f469",
    "\u2764\ufe0f",
    "\U0001f3f3\ufe0f\u200d\U0001f308",
    "\u263a",
    "\u0645",
    "\u06cc",
    "\u0915\u094d",
    "\u0937",
    "e\u0301",
    "A\u030a",
    "\ufb2c",
    "caf\u00e9",
    "\u65e5\u672c",
    "\u0130",  # lower-cases to two characters
    "\u212a",  # Kelvin sign: matches "k" ignoring case
    "\u017f",  # long s: matches "s" ignoring case
    "\u00df",
]
PROSE = [
    "alice",
    "the API changed",
    "please",
    "Thanks!",
    "see",
    "and/or",
    "1/2",
    "wait...",
    "1..10",
    "src/app.py",
    "https://example.com/docs/v2",
    "http://x.example/?next=/etc/passwd",
    "//cdn.example.com/lib.js",
    "file:///etc/passwd",
    "FILE://localhost/tmp/x",
    "/compact",
    "/etc/passwd",
    "/home/u/.ssh/id_rsa.",
    "/srv/data/",
    "/a/100%",
    "/tmp/100%",
    "/v2/orders",
    "GET /api/users/{id}",
    "/v2/../etc",
    "/./",
    "etc",
    "home",
    "Users",
    "~2/3",
    "~_x/y",
    "~/.aws/credentials",
    "~alice/notes.txt",
    "~",
    "../../etc/shadow",
    "a/..",
    "..",
    "../",
    "/",
    ".",
    "(",
    "`",
    '"',
    "'",
    ":",
    "=",
    ",",
    ";",
    "[",
    "]",
    "-",
    "_",
    "%",
    "[path:",
    "[redacted:",
    "sk-learn",
    "scikit-learn",
    "ghp_short",
    "AKIA",
    "Asia",
    "xoxb-",
    "eyJ",
    PREFIX,
    "ccc1.short",
    "monkey",
    "commit 3f9a1c2b7d4e5f60a1b2c3d4e5f60718293a4b5c",
]
KEYWORDS = [
    "password",
    "PASSWORD",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "CLIENT_SECRET",
    "token",
    "Token",
    "api_key",
    "aws_secret_access_key",
    "key",
    "auth",
    "Authorization",
    "credentials",
    "token_expiry",
    "\u212aey",
    "pa\u017fsword",
]
ASSIGN = ["=", ": ", ":", " = ", '": "', "='", ":\t"]
VALUES = [
    "hunter22",
    "hunt3r",
    "basic hunt3r",
    "token aB3$xY",
    "Tr0ub4dor&3",
    "correct-horse",
    "required",
    "Required",
    "${DB_PASSWORD}",
    "<your-token-here>",
    "********",
    "2024-01-01T00:00:00Z",
    "Bearer ",
    "basic ",
    "token ",
]


def chars(alphabet: str, size: int) -> st.SearchStrategy[str]:
    # The length a rule asks for, or a little shorter or longer to cross its limits.
    return st.one_of(
        st.text(alphabet, min_size=size, max_size=size),
        st.text(alphabet, min_size=max(0, size - 3), max_size=size + 3),
    )


def prefixed(prefix: str, alphabet: str, size: int) -> st.SearchStrategy[str]:
    return chars(alphabet, size).map(lambda rest: prefix + rest)


pem = st.builds(
    lambda kind, body, end: f"-----BEGIN {kind}PRIVATE KEY-----\n{body}{end}",
    st.sampled_from(["", "RSA ", "OPENSSH ", "EC ", "PGP "]),
    st.text(B64 + "\n:,.()- ", max_size=40),
    st.sampled_from(["\n-----END RSA PRIVATE KEY-----", "-----END PRIVATE KEY-----", "!", ""]),
)
jwt = st.builds(
    lambda a, b, c: f"eyJ{a}.eyJ{b}.{c}",
    chars(WORD + "-", 10),
    chars(WORD + "-", 10),
    chars(WORD + "-", 8),
)
assignment = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["", "", "aws_", "AWS ", "db-", "x"]),
        st.sampled_from(KEYWORDS),
        st.sampled_from(["", "", "s", "_id", "-x", "S", "_for_the_build_server"]),
        st.sampled_from(ASSIGN),
        st.one_of(st.sampled_from(VALUES), chars(ALNUM + "/+-_.", 18)),
    ),
)
secrets = st.one_of(
    pem,
    jwt,
    assignment,
    prefixed("sk-", WORD + "-", 24),
    prefixed("sk-ant-api03-", WORD + "-", 24),
    st.sampled_from("pousr").flatmap(lambda c: prefixed(f"gh{c}_", ALNUM, 36)),
    prefixed("github_pat_", WORD, 24),
    st.sampled_from(["AKIA", "ASIA", "ABIA", "ACCA"]).flatmap(
        lambda p: prefixed(p, UPPER_DIGITS, 16)
    ),
    st.sampled_from("abprs").flatmap(lambda c: prefixed(f"xox{c}-", ALNUM + "-", 14)),
    prefixed(PREFIX, WORD + "-", 43),
)
fragment = st.one_of(
    assignment,
    st.sampled_from(TERMINAL),
    st.sampled_from(INVISIBLE),
    st.sampled_from(SMUGGLED),
    st.sampled_from(SCRIPTS),
    st.sampled_from(PROSE),
    secrets,
    st.characters(),
    st.text(max_size=4),
)
separator = st.sampled_from(["", " ", " ", "\n", "(", "=", ":", "/", "'", "x"])
texts = st.lists(st.tuples(separator, fragment).map("".join), max_size=24).map("".join)

EXPECTED_CHANGES = {
    "ansi",
    "control",
    "surrogate",
    "newline",
    "bidi",
    "invisible",
    "tag",
    "nfc",
    "secret",
    "path",
}
EXPECTED_SECRETS = {
    "private-key",
    "openai-key",
    "anthropic-key",
    "github-token",
    "aws-access-key-id",
    "aws-secret-key",
    "slack-token",
    "jwt",
    "ccc-credential",
    "password",
    "assigned-secret",
}


def test_sanitize_gives_what_the_reference_gives() -> None:
    seen: Counter[str] = Counter()

    @given(text=texts)
    @settings(
        max_examples=700,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def same_as_reference(text: str) -> None:
        for options, reference_options in OPTION_GRID:
            got = sanitize(text, options)
            want = reference.sanitize(text, reference_options)
            assert got.text == want.text, (ascii(text), options)
            assert list(got.changes.items()) == list(want.changes.items()), (ascii(text), options)
            assert list(got.secret_kinds.items()) == list(want.secret_kinds.items())
            assert got.path_action == want.path_action
            assert got.describe() == want.describe()
            for kind in (*want.changes, *want.secret_kinds):
                event(f"rule fired: {kind}")
                seen[kind] += 1

    same_as_reference()
    missing = (EXPECTED_CHANGES | EXPECTED_SECRETS) - set(seen)
    assert not missing, sorted(missing)


key_and_value = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["", "", "aws_", "x", '"', " ", "\u0130", "\u0130 token "]),
        st.sampled_from(
            [
                "password",
                "PASSWORD",
                "pwd",
                "token",
                "Token",
                "api_key",
                "secret",
                "Authorization",
                "credential",
                "\u212aey",
                "pa\u017fsword",
                "monkey",
                "https",
                "redacted",
            ]
        ),
        st.sampled_from(["", "", "s", "_id", "_for_the_build_server", '"', " "]),
        st.sampled_from(["=", ":", ": ", " = ", ":\t", '": "', "::"]),
        st.sampled_from(
            [
                "a1B2c3D4e5F6g7H8",
                "Zx9_kQ2-vB7mN4pL8wR1",
                "//x.example/a1B2c3D4e5F6",
                "Bearer a1B2c3D4e5F6g7H8",
                "basic hunt3r",
                "hunt3r",
                "hunter",
                "Hunter",
                "a1B2c",
                "${DB_PASSWORD}",
                "[redacted:x]",
            ]
        ),
    ),
)


@given(
    text=st.lists(
        st.one_of(key_and_value, st.sampled_from([" ", "\n", ",", "x", "=", ":", '"'])),
        max_size=6,
    ).map("".join)
)
@settings(max_examples=1000, deadline=None)
def test_assignments_give_what_the_reference_gives(text: str) -> None:
    """The assignment rule's gate sits on fine edges: keyword distance, value length, spaces."""
    got = sanitize(text)
    want = reference.sanitize(text)
    assert (got.text, got.secret_kinds) == (want.text, want.secret_kinds)

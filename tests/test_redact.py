"""Secrets are masked wherever they hide in a response."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from sqlbridge.allowlist import parse_entry
from sqlbridge.cli import main
from sqlbridge.config import Account, AfilnetSettings, HttpSettings, Secret, Settings
from sqlbridge.errors import ProtocolError, ProviderError, TransientError
from sqlbridge.providers.transport import SNIPPET, Transport, json_object, refuse_client_error
from sqlbridge.queue import Queue
from sqlbridge.redact import MASK, credential_parts, scrub
from sqlbridge.worker import Worker

from .capture import Capture
from .conftest import FAST_WORKER


def test_known_secrets_are_masked_inside_text_keys_and_lists() -> None:
    response = {"message": "Usuário ACME42@7 está inativo.",
                "structure": {"CompaniesHash": "ACME42", "Departments": [{"Name": "ACME42 HQ"}]},
                "data": {"Token": "eyJ.abc"}}
    clean = scrub(response, ["ACME42", "pw"])
    assert clean == {"message": f"Usuário {MASK}@7 está inativo.",
                     "structure": {"CompaniesHash": MASK,
                                   "Departments": [{"Name": f"{MASK} HQ"}]},
                     "data": {"Token": MASK}}
    assert response["data"]["Token"] == "eyJ.abc"  # the original is untouched


def test_plain_values_pass_through() -> None:
    assert scrub(42, ["x"]) == 42 and scrub(None, ["x"]) is None
    assert scrub("nothing here", ["secret-value"]) == "nothing here"


def test_credential_keys_are_blanked_in_any_case_and_depth() -> None:
    value = {"Authorization": "Basic abc", "PASSWORD": "x", "pass": "y", "token": "t",
             "items": [{"Token": "z", "name": "ok"}], "empty": {"password": ""}}
    assert scrub(value, []) == {"Authorization": MASK, "PASSWORD": MASK, "pass": MASK,
                                "token": MASK, "items": [{"Token": MASK, "name": "ok"}],
                                "empty": {"password": ""}}


def test_secrets_are_masked_in_every_spelling_a_vendor_may_echo() -> None:
    secrets = ["demo@example.com", "p ss&wörd"]
    echoed = {"body": "user=demo%40example.com&password=p+ss%26w%C3%B6rd",
              "json": '{"user": "demo@example.com", "pass": "p ss&w\\u00f6rd"}',
              "path": "/x/p%20ss%26w%C3%B6rd"}
    clean = scrub(echoed, secrets)
    assert clean == {"body": f"user={MASK}&password={MASK}",
                     "json": f'{{"user": "{MASK}", "pass": "{MASK}"}}',
                     "path": f"/x/{MASK}"}


def test_secrets_in_keys_and_tuples_are_masked_and_the_longest_wins() -> None:
    clean = scrub({"ACME42-extra": ("ACME42", "ACME42-extra!")}, ["ACME42", "ACME42-extra"])
    assert clean == {MASK: [MASK, f"{MASK}!"]}


def test_very_short_secrets_are_not_used_to_mask() -> None:
    # A two-letter password would otherwise mask every word that contains it.
    assert scrub("pw and pwd", ["pw"]) == "pw and pwd"


# -- credential parts and base64 forms -----------------------------------------------------------


def test_the_credential_part_of_a_header_value_is_a_secret_on_its_own() -> None:
    assert credential_parts("Bearer tok-98765") == ["Bearer tok-98765", "tok-98765"]
    basic = base64.b64encode(b"me@example.com:s3cret!").decode()
    assert credential_parts(f"Basic {basic}") == [f"Basic {basic}", basic,
                                                  "me@example.com:s3cret!", "me@example.com",
                                                  "s3cret!"]
    assert credential_parts("k-secret-123") == ["k-secret-123"]
    # A value of several words gives what follows the scheme whole, never word by word.
    assert credential_parts("Custom Production tok-1") == ["Custom Production tok-1",
                                                          "Production tok-1"]
    assert scrub("the token tok-98765 was wrong", credential_parts("Bearer tok-98765")) == \
        f"the token {MASK} was wrong"


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode,
                                    lambda b: base64.b64encode(b).rstrip(b"=")])
def test_secrets_are_masked_in_base64_too(encode: Any) -> None:
    secret = "p>ss?wörd~~"
    form = encode(secret.encode()).decode()
    assert scrub({"echo": f"x {form} y", "json": json.dumps(form)}, [secret]) == \
        {"echo": f"x {MASK} y", "json": json.dumps(MASK)}


def test_account_secrets_hold_header_parts_user_password_pairs_and_proxy_passwords() -> None:
    acct = Account("a", afilnet=AfilnetSettings(user=Secret("me@example.com"),
                                                password=Secret("pw-123456")),
                   http=HttpSettings(headers={"Authorization": Secret("Bearer tok-98765")},
                                     proxy=Secret("http://proxyuser:proxy-pw-1@proxy:3128")))
    secrets = acct.secrets()
    for part in ("me@example.com:pw-123456", "tok-98765", "Bearer tok-98765", "proxy-pw-1"):
        assert part in secrets
    echoed = base64.b64encode(b"me@example.com:pw-123456").decode()
    assert scrub(f"Authorization: Basic {echoed}", secrets) == f"Authorization: Basic {MASK}"


def test_a_secret_that_is_not_valid_unicode_does_not_break_scrubbing() -> None:
    assert scrub("x \udcff-secret y", ["\udcff-secret"]) == f"x {MASK} y"


# -- end to end: a hostile server echoing credentials, through the worker, the outbox, show -----


@pytest.mark.sqlite_only
def test_echoed_credentials_never_reach_the_outbox_or_show(engine: Engine, db_url: str) -> None:
    # A user of 15 characters: its base64 is a clean prefix of base64(user:password), so
    # masking the user alone would leave the password's base64 readable after it.
    token, key, user, password = "tok-5e2d9a8c", "key-0b7d3e", "ops@example.com", "pw-6c1f0a"
    with Capture() as server:
        acct = Account(
            "default",
            afilnet=AfilnetSettings(url=server.url + "/afilnet-echo/", user=Secret(user),
                                    password=Secret(password), auth="basic"),
            http=HttpSettings(allowed_hosts=(parse_entry(server.url, allow_private=True),),
                              headers={"Authorization": Secret(f"Bearer {token}"),
                                       "X-Api-Key": Secret(key)}))
        live = Settings(database_url=db_url, worker=FAST_WORKER, accounts={"default": acct})
        queue = Queue(engine, live)
        ids = [queue.enqueue("http.request", {"url": server.url + path, "method": "GET"}).id
               for path in ("/echo-secrets", "/reason-echo")]
        ids.append(queue.enqueue("user.getbalance", {}).id)  # an Afilnet passthrough read
        Worker(live, engine, schedules=False).run(once=True)
        seen = server.requests
    # The server did get the credentials, and did echo them in every form.
    assert any(r["headers"].get("Authorization") == f"Bearer {token}" for r in seen)
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert any(r["headers"].get("Authorization") == f"Basic {basic}" for r in seen)
    forms = {token, key, user, password, f"{user}:{password}", basic,
             base64.b64encode(token.encode()).decode(),
             base64.b64encode(f"Bearer {token}".encode()).decode(),
             base64.urlsafe_b64encode(key.encode()).decode().rstrip("="),
             basic[len(base64.b64encode(user.encode())):]}
    rows = [queue.get(i, with_attempts=True) for i in ids]
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    dump = "\n".join(sqlite3.connect(db_url.removeprefix("sqlite:///")).iterdump())
    printed = "".join(CliRunner().invoke(main, ["show", str(i), "--json", "--database-url",
                                                db_url]).output for i in ids)
    assert MASK in dump and MASK in printed
    for form in forms:
        assert form not in dump, form
        assert form not in printed, form


# -- excerpts: a secret cut in half by a length limit is still a secret -------------------------


class _Fixed(BaseHTTPRequestHandler):
    status = 503
    body = b""
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.mark.parametrize("status", [503, 400, 200])
def test_a_secret_straddling_the_excerpt_limit_leaves_no_part_behind(status: int) -> None:
    # A body excerpt is cut at SNIPPET characters: cutting before masking left the first part
    # of a secret that straddles the cut in error_message / response.
    secret = "tok-Q7rT9wXz5kLm2Np8"
    body = ("x" * (SNIPPET - 8) + secret + " tail").encode()
    handler = type("H", (_Fixed,), {"status": status, "body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    transport = Transport(1)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with pytest.raises((TransientError, ProviderError, ProtocolError)) as info:
            resp = transport.send("GET", url, what="t", timeout=(5, 5), secrets=[secret])
            refuse_client_error(resp, "t", [secret])
            json_object(resp, "t", [secret])
    finally:
        transport.close()
        server.shutdown()
        server.server_close()
    exc = info.value
    stored = f"{exc} {getattr(exc, 'response', None)}"
    assert "x" * 10 in stored  # the excerpt is there...
    assert secret[:6] not in stored  # ...without the start of the secret


# -- spellings a careful server does not use, but a careless or hostile one does ----------------


def test_a_numeric_secret_echoed_as_a_json_number_is_masked() -> None:
    # A PIN or numeric API key comes back as a JSON number, not a string.
    clean = scrub({"pin": 48213957, "list": [48213957, 1.5], "ok": True, "n": 7}, ["48213957"])
    assert clean == {"pin": MASK, "list": [MASK, 1.5], "ok": True, "n": 7}


@pytest.mark.parametrize("shift", [0, 1, 2, 4, 5])
def test_a_secret_inside_a_longer_base64_blob_is_masked_at_any_alignment(shift: int) -> None:
    # A debugging endpoint echoing the raw request base64-encoded: the secret starts at any
    # byte offset, so its base64 differs from the base64 of the secret alone.
    secret = "tok-Q7rT9wXz5kLm2Np8"
    raw = b"GET / HTTP/1.1\r\n" + b"x" * shift + b"Authorization: Bearer " + secret.encode() \
        + b"\r\nAccept: */*\r\n"
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(raw).decode()
        clean = scrub({"raw": blob}, [secret])["raw"]
        assert MASK in clean
        decoded = base64.b64decode(clean.replace(MASK, "") + "==", altchars=b"-_"
                                   if encode is base64.urlsafe_b64encode else None)
        assert secret[2:-2].encode() not in decoded


def test_a_secret_in_lower_case_percent_encoding_or_php_json_escapes_is_masked() -> None:
    secret = "pa/ss:wörd+1"
    echoed = ["user=pa%2fss%3aw%c3%b6rd%2b1",  # lower-case hex, as many encoders write it
              '{"pass":"pa\\/ss:w\\u00f6rd+1"}',  # PHP json_encode escapes '/'
              '{"pass":"pa/ss:w\\u00F6rd+1"}']  # upper-case \\u hex (.NET)
    assert scrub(echoed, [secret]) == ["user=***", '{"pass":"***"}', '{"pass":"***"}']


def test_scrubbing_a_large_answer_with_many_secrets_has_no_cliff() -> None:
    # A 5 MB answer made of many short strings, with 150 known secrets (every account's): one
    # substring search per (string, spelling) pair took tens of seconds; the worker scrubs each
    # answer twice.
    import random
    import string
    import time
    rng = random.Random(7)
    secrets = [f"s{i:03d}-" + "".join(rng.choices(string.ascii_letters + "/+@", k=24))
               for i in range(150)]
    answer = {"items": ["".join(rng.choices(string.ascii_letters, k=10)) for _ in range(400_000)],
              "echo": " ".join(secrets)}
    t0 = time.process_time()
    clean = scrub(answer, secrets)
    took = time.process_time() - t0
    assert clean["echo"] == " ".join([MASK] * 150)
    assert took < 4, f"scrubbing took {took:.1f}s of CPU"  # the cliff was 7-10 s; now 0.2 s


@pytest.mark.parametrize("echo", [
    "t\\u006fk-Q7rT9wXz5kLm2Np8",  # one letter escaped: decodes to the secret
    "\\u0074\\u006F\\u006b-Q7rT9wXz5kLm2Np8",
    "tok%2DQ7rT9wXz5kLm2Np8", "%74ok-Q7rT9%77Xz5kLm2Np8",  # needless percent-encoding
    "tok-Q7rT9w\\u0058z5kLm2Np8",
])
def test_a_secret_split_by_escapes_that_decode_to_it_is_masked(echo: str) -> None:
    # After one JSON parse, a string holding JSON text (a gateway echoing a body as a string)
    # keeps its escapes: whoever decodes it again reads the secret.
    secret = "tok-Q7rT9wXz5kLm2Np8"
    inner = '{"auth": "' + echo + '", "ok": 1}'
    answer = json.loads(json.dumps({"body": inner}))
    clean = scrub(answer, [secret])
    assert clean == {"body": '{"auth": "***", "ok": 1}'}
    assert secret not in json.loads(clean["body"])["auth"]


def test_a_run_of_overlapping_matches_is_one_span_in_bounded_memory() -> None:
    # "aaaaaaaa" matches at every position of a run of a's: the spans are merged as they are
    # found, not collected one per position.
    import tracemalloc
    tracemalloc.start()
    try:
        clean = scrub("x" + "a" * 300_000 + "x", ["aaaaaaaa"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert clean == f"x{MASK}x"
    assert peak < 8_000_000, f"{peak / 1e6:.0f} MB"


def test_a_parameter_of_a_structured_credential_header_is_a_secret_on_its_own() -> None:
    # A server that echoes only the key of "ApiKey key=...", or the signature of an
    # AWS-style header, echoes a credential; ordinary words in such a header stay readable.
    aws = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE7Q2/20150830/us-east-1/iam/aws4_request, "
           "SignedHeaders=content-type;host, Signature=5d672d79c15b13162d9279b0855cfba6")
    parts = credential_parts(aws)
    assert "5d672d79c15b13162d9279b0855cfba6" in parts
    assert "AKIDEXAMPLE7Q2/20150830/us-east-1/iam/aws4_request" in parts
    assert "content-type" not in parts and "host" not in parts
    assert "k3y-9f8e7d6c" in credential_parts('ApiKey key="k3y-9f8e7d6c", realm=api')
    assert "s3cr3t-t0ken" in credential_parts("token=s3cr3t-t0ken;v=1")
    assert scrub("the content-type was wrong for key k3y-9f8e7d6c",
                 credential_parts('ApiKey key="k3y-9f8e7d6c"')) == \
        f"the content-type was wrong for key {MASK}"


def test_a_secret_echoed_in_another_unicode_normal_form_is_masked() -> None:
    # A server that normalises text (NFD on macOS file names, NFC in many databases) echoes
    # the same password as other code points.
    import unicodedata
    secret = unicodedata.normalize("NFC", "pässwörd-çà")
    for form in ("NFD", "NFKD", "NFC"):
        echoed = unicodedata.normalize(form, secret)
        assert scrub(f"x {echoed} y", [secret]) == f"x {MASK} y", form
    decomposed = unicodedata.normalize("NFD", secret)
    assert scrub(f"x {secret} y", [decomposed]) == f"x {MASK} y"


class _Gzip(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:
        import gzip
        raw = b" " * 50_000_000 if self.path == "/bomb" else \
            json.dumps({"echo": "tok-Q7rT9wXz5kLm2Np8"}).encode()
        body = b"not gzip at all" if self.path == "/corrupt" else gzip.compress(raw, 9)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_compressed_answer_is_decoded_scrubbed_and_bounded_after_decoding() -> None:
    # requests asks for gzip: read without decoding, the body stayed compressed, so it was
    # neither JSON nor scrubbable (the secret went to the outbox inside the gzip bytes); and
    # the size limit must hold for what it decodes to (a 50 MB gzip bomb is 50 KB).
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gzip)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    transport = Transport(1)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        resp = transport.send("GET", url + "/", what="t", timeout=(5, 5), secrets=[])
        assert resp.json() == {"echo": "tok-Q7rT9wXz5kLm2Np8"}
        assert scrub(resp.json(), ["tok-Q7rT9wXz5kLm2Np8"]) == {"echo": MASK}
        with pytest.raises(ProtocolError) as e:
            transport.send("GET", url + "/bomb", what="t", timeout=(5, 30), secrets=[],
                           max_bytes=1_000_000)
        assert e.value.code == "RESPONSE_TOO_LARGE"
        # A body that does not decode is an unreadable answer, not a lost connection (which
        # would make a delivered send 'uncertain' and retry a read as if the network failed).
        with pytest.raises(ProtocolError) as e:
            transport.send("GET", url + "/corrupt", what="t", timeout=(5, 5), secrets=[])
        assert "does not decode" in str(e.value)
    finally:
        transport.close()
        server.shutdown()
        server.server_close()

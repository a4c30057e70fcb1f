"""Secrets are masked wherever they hide in a response."""

from sqlbridge.redact import MASK, scrub


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

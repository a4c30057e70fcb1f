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

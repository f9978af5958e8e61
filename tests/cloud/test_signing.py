"""Signature v1 against the vendor's documented test vector."""

from authserver.cloud.signing import canonical_query, percent_encode, sign_v1

VECTOR = {
    "Timestamp": "2016-02-23T12:46:24Z",
    "Format": "XML",
    "AccessKeyId": "testid",
    "Action": "DescribeRegions",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    "Version": "2014-05-26",
    "SignatureVersion": "1.0",
}


def test_documented_vector() -> None:
    assert sign_v1("GET", VECTOR, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_signature_parameter_is_not_signed() -> None:
    with_sig = {**VECTOR, "Signature": "whatever"}
    assert sign_v1("GET", with_sig, "testsecret") == sign_v1("GET", VECTOR, "testsecret")


def test_wrong_secret_changes_signature() -> None:
    assert sign_v1("GET", VECTOR, "othersecret") != "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_percent_encoding_rules() -> None:
    assert percent_encode("a b*c~d/e+f#g,h") == "a%20b%2Ac~d%2Fe%2Bf%23g%2Ch"
    assert percent_encode("ü") == "%C3%BC"


def test_canonical_query_sorts_by_name() -> None:
    assert canonical_query({"b": "2", "a": "1", "Signature": "x"}) == "a=1&b=2"

"""SigV4 against AWS's published examples."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.links import sigv4


class SigV4Tests(SynchronousTestCase):
    def test_signature_test_suite_get_vanilla_query_order_key_case(self) -> None:
        """AWS's SigV4 test suite, get-vanilla-query-order-key-case: the published signature."""
        request = "\n".join(("GET", "/", sigv4.canonical_query({"Param2": "value2", "Param1": "value1"}),
                             "host:example.amazonaws.com", "x-amz-date:20150830T123600Z", "",
                             "host;x-amz-date", sigv4.EMPTY_SHA256))
        self.assertEqual(sigv4.signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z",
                                         "us-east-1", "service", request),
                         "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")

    def test_presigned_url_s3_example(self) -> None:
        """The S3 documentation's presigned GET of examplebucket/test.txt (query auth)."""
        now = calendar.timegm(time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))
        query = sigv4.presign(sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                              "examplebucket.s3.amazonaws.com", "/test.txt", "us-east-1", "s3", now,
                              expires=86400, payload_hash="UNSIGNED-PAYLOAD")
        self.assertEqual(query.rsplit("X-Amz-Signature=", 1)[1],
                         "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
        self.assertIn("X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request", query)

    def test_iot_session_token_after_the_signature(self) -> None:
        """AWS IoT: the session token is appended after signing, URI-encoded."""
        query = sigv4.presign(sigv4.Credentials("AK", "SK", "tok/en+="), "a.iot.eu-west-1.amazonaws.com", "/mqtt",
                              "eu-west-1", "iotdevicegateway", 0)
        self.assertTrue(query.endswith("&X-Amz-Security-Token=tok%2Fen%2B%3D"))
        self.assertLess(query.index("X-Amz-Signature"), query.index("X-Amz-Security-Token"))

    def test_credentials_file(self) -> None:
        """An AWS shared credentials file's profile; a missing key is a clear error."""
        path = Path(self.mktemp())
        path.write_text("[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n[bad]\naws_access_key_id = x\n")
        self.assertEqual(sigv4.read_credentials(path), sigv4.Credentials("AK", "SK"))
        with self.assertRaisesRegex(ValueError, "lacks aws_secret_access_key"):
            sigv4.read_credentials(path, "bad")
        with self.assertRaisesRegex(ValueError, "no \\[other\\] profile"):
            sigv4.read_credentials(path, "other")

    def test_a_file_that_does_not_parse_is_told_by_line_never_quoting_it(self) -> None:
        """configparser quotes the offending line; a credentials file's line may be the secret,
        and the message goes to the log and to check-config's output: line numbers only."""
        path = Path(self.mktemp())
        cases = {
            "aws_secret_access_key = SECRET\n[default]\n": "line 1 comes before any [profile] header",
            "[default]\naws_access_key_id = AK\nSECRET\n": "line 3 is not key = value",
            "[default]\n[default]\n": "[default] appears twice",
            "[default]\naws_secret_access_key = SECRET\naws_secret_access_key = SECRET2\n":
                "aws_secret_access_key appears twice in [default]",
        }
        for text, problem in cases.items():
            path.write_text(text)
            with self.assertRaises(ValueError) as caught:
                sigv4.read_credentials(path)
            self.assertEqual(str(caught.exception), f"{path}: not an AWS credentials file: {problem}")
            self.assertNotIn("SECRET", str(caught.exception))

"""Tests for frameiod.signature: Frame.io's v0 request signature (frameio-platform.md §1)."""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Callable, Mapping

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from frameiod.signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    Verified,
    sign,
    verify,
)

# Known-answer vector from frameio-platform.md §1.
KAT_SECRET = "example-secret"
KAT_TIMESTAMP = "1700000000"
KAT_BODY = (
    b'{"type":"file.ready","resource":{"id":"00000000-0000-0000-0000-000000000001","type":"file"}}'
)
KAT_SIGNATURE = "v0=44d902e3136e301ef0e1dfa4a8f784f636f58ecb352a593fc4a90d04fd1f24fc"

NOW = 1_700_000_000
TOLERANCE = 300
SECRET = "s3cret"
BODY = b'{"type":"file.ready","resource":{"id":"r1"}}'

REASONS = frozenset(
    {
        "missing_timestamp",
        "missing_signature",
        "duplicate_header",
        "bad_timestamp",
        "malformed_signature",
        "signature_mismatch",
        "stale",
    }
)


def fixed_clock(now: float) -> Callable[[], float]:
    return lambda: now


def headers_for(timestamp: str, signature: str) -> dict[str, str]:
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature}


def raw_sign(secret: str, body: bytes, timestamp: str) -> str:
    """The v0 signature over the timestamp's UTF-8 bytes, for timestamps sign() cannot take."""
    message = b"v0:" + timestamp.encode("utf-8") + b":" + body
    return "v0=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_now(
    headers: Mapping[str, str] | CIMultiDict[str],
    body: bytes = BODY,
    secrets: tuple[str | bytes, ...] = (SECRET,),
    now: float = NOW,
) -> Verified:
    return verify(headers, body, secrets, TOLERANCE, clock=fixed_clock(now))


def expect_failure(
    headers: Mapping[str, str] | CIMultiDict[str],
    body: bytes = BODY,
    secrets: tuple[str | bytes, ...] = (SECRET,),
    now: float = NOW,
) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        verify_now(headers, body, secrets, now)
    assert info.value.reason in REASONS
    return info.value


def verify_or_error(
    headers: Mapping[str, str] | CIMultiDict[str], body: bytes, secrets: list[str | bytes]
) -> Verified | SignatureError:
    try:
        return verify(headers, body, secrets, TOLERANCE, clock=fixed_clock(NOW))
    except SignatureError as exc:
        return exc


class TestKnownAnswer:
    def test_sign_produces_documented_vector(self) -> None:
        assert sign(KAT_SECRET, KAT_BODY, KAT_TIMESTAMP) == KAT_SIGNATURE

    def test_sign_accepts_int_timestamp_and_bytes_secret(self) -> None:
        """An int timestamp and a bytes secret sign the same message as their str forms."""
        assert sign(KAT_SECRET.encode(), KAT_BODY, int(KAT_TIMESTAMP)) == KAT_SIGNATURE

    def test_verify_accepts_documented_vector(self) -> None:
        result = verify(
            headers_for(KAT_TIMESTAMP, KAT_SIGNATURE),
            KAT_BODY,
            [KAT_SECRET],
            TOLERANCE,
            clock=fixed_clock(int(KAT_TIMESTAMP)),
        )
        assert result == Verified(timestamp=1_700_000_000, secret_index=0, signature=KAT_SIGNATURE)

    def test_verify_rejects_documented_vector_under_another_secret(self) -> None:
        with pytest.raises(SignatureError) as info:
            verify(
                headers_for(KAT_TIMESTAMP, KAT_SIGNATURE),
                KAT_BODY,
                ["other-secret"],
                TOLERANCE,
                clock=fixed_clock(int(KAT_TIMESTAMP)),
            )
        assert info.value.reason == "signature_mismatch"


class TestTolerance:
    """The timestamp must lie within ``tolerance`` seconds of the clock, in both directions."""

    @pytest.mark.parametrize("offset", [-299, 299, -300, 300, 0], ids=lambda o: f"now{o:+d}")
    def test_timestamp_within_tolerance_is_accepted(self, offset: int) -> None:
        ts = NOW + offset
        signature = sign(SECRET, BODY, ts)
        result = verify_now(headers_for(str(ts), signature))
        assert result == Verified(timestamp=ts, secret_index=0, signature=signature)

    @pytest.mark.parametrize(
        ("offset", "direction"),
        [(-301, "old"), (301, "in the future"), (-100_000, "old"), (100_000, "in the future")],
        ids=["now-301", "now+301", "far-past", "far-future"],
    )
    def test_timestamp_outside_tolerance_is_stale(self, offset: int, direction: str) -> None:
        ts = NOW + offset
        error = expect_failure(headers_for(str(ts), sign(SECRET, BODY, ts)))
        assert error.reason == "stale"
        assert error.is_stale is True
        assert direction in error.detail

    def test_wrong_signature_on_stale_timestamp_reports_mismatch_not_stale(self) -> None:
        """The signature is checked before the clock, so ``stale`` implies a real signature."""
        ts = NOW - 10_000
        error = expect_failure(headers_for(str(ts), sign("not-the-secret", BODY, ts)))
        assert error.reason == "signature_mismatch"
        assert error.is_stale is False

    def test_injected_clock_is_used_not_wall_time(self) -> None:
        """A 2001 timestamp verifies when the injected clock says it is 2001."""
        ts = 1_000_000_000
        result = verify_now(headers_for(str(ts), sign(SECRET, BODY, ts)), now=ts + 1.5)
        assert result.timestamp == ts


class TestRotation:
    OLD = "old-secret"
    NEW = "new-secret"

    @pytest.mark.parametrize(("signing_secret", "index"), [(OLD, 0), (NEW, 1)])
    def test_either_secret_verifies_and_index_says_which(
        self, signing_secret: str, index: int
    ) -> None:
        signature = sign(signing_secret, BODY, NOW)
        result = verify_now(headers_for(str(NOW), signature), secrets=(self.OLD, self.NEW))
        assert result.secret_index == index
        assert result.signature == signature

    def test_third_secret_is_a_mismatch(self) -> None:
        error = expect_failure(
            headers_for(str(NOW), sign("third-secret", BODY, NOW)), secrets=(self.OLD, self.NEW)
        )
        assert error.reason == "signature_mismatch"

    def test_no_secrets_configured_is_a_mismatch(self) -> None:
        error = expect_failure(headers_for(str(NOW), sign(SECRET, BODY, NOW)), secrets=())
        assert error.reason == "signature_mismatch"

    def test_bytes_secret_matches_its_str_form(self) -> None:
        result = verify_now(
            headers_for(str(NOW), sign(SECRET, BODY, NOW)), secrets=(b"x", SECRET.encode())
        )
        assert result.secret_index == 1


GOOD_SIGNATURE = sign(SECRET, BODY, NOW)
GOOD_HEX = GOOD_SIGNATURE.removeprefix("v0=")


class TestMissingAndDuplicateHeaders:
    def test_missing_timestamp_header(self) -> None:
        error = expect_failure({SIGNATURE_HEADER: GOOD_SIGNATURE})
        assert error.reason == "missing_timestamp"

    def test_missing_signature_header(self) -> None:
        error = expect_failure({TIMESTAMP_HEADER: str(NOW)})
        assert error.reason == "missing_signature"

    def test_no_headers_at_all_reports_missing_timestamp(self) -> None:
        assert expect_failure({}).reason == "missing_timestamp"

    @pytest.mark.parametrize("duplicated", [SIGNATURE_HEADER, TIMESTAMP_HEADER])
    def test_header_sent_twice_is_refused_even_if_both_values_are_valid(
        self, duplicated: str
    ) -> None:
        headers: CIMultiDict[str] = CIMultiDict(headers_for(str(NOW), GOOD_SIGNATURE))
        headers.add(duplicated, headers[duplicated])
        error = expect_failure(headers)
        assert error.reason == "duplicate_header"
        assert duplicated in error.detail

    def test_signature_duplicated_with_different_values(self) -> None:
        headers: CIMultiDict[str] = CIMultiDict(headers_for(str(NOW), GOOD_SIGNATURE))
        headers.add(SIGNATURE_HEADER.lower(), "v0=" + "0" * 64)
        assert expect_failure(headers).reason == "duplicate_header"

    def test_plain_dict_with_same_header_in_two_casings_is_a_duplicate(self) -> None:
        headers = headers_for(str(NOW), GOOD_SIGNATURE)
        headers[SIGNATURE_HEADER.lower()] = GOOD_SIGNATURE
        assert expect_failure(headers).reason == "duplicate_header"


class TestHeaderContainers:
    """Headers may be a multidict (what aiohttp gives) or a plain, case-insensitive dict."""

    @pytest.mark.parametrize(
        "transform",
        [str.lower, str.upper, lambda name: name],
        ids=["lowercase", "uppercase", "canonical"],
    )
    def test_plain_dict_is_looked_up_case_insensitively(
        self, transform: Callable[[str], str]
    ) -> None:
        headers = {
            transform(TIMESTAMP_HEADER): str(NOW),
            transform(SIGNATURE_HEADER): GOOD_SIGNATURE,
            "content-type": "application/json",
        }
        result = verify_now(headers)
        assert result == Verified(timestamp=NOW, secret_index=0, signature=GOOD_SIGNATURE)

    def test_cimultidict_proxy_with_lowercase_names(self) -> None:
        headers = CIMultiDictProxy(
            CIMultiDict(
                {"x-frameio-request-timestamp": str(NOW), "x-frameio-signature": GOOD_SIGNATURE}
            )
        )
        assert verify_now(headers).timestamp == NOW


class TestMalformedSignature:
    @pytest.mark.parametrize(
        "signature",
        [
            "v1=" + GOOD_HEX,
            "V0=" + GOOD_HEX,
            GOOD_HEX,
            "v0=" + GOOD_HEX.upper(),
            "v0=" + GOOD_HEX[:-1] + "g",
            "v0=" + "z" * 64,
            "v0=" + GOOD_HEX[:63],
            "v0=" + GOOD_HEX + "0",
            GOOD_SIGNATURE + "\n",
            " " + GOOD_SIGNATURE,
            GOOD_SIGNATURE + " ",
            "v0=",
            "",
        ],
        ids=[
            "v1-prefix",
            "uppercase-prefix",
            "no-prefix",
            "uppercase-hex",
            "non-hex-last-char",
            "non-hex-all",
            "63-hex",
            "65-hex",
            "trailing-newline",
            "leading-space",
            "trailing-space",
            "prefix-only",
            "empty",
        ],
    )
    def test_malformed_signature(self, signature: str) -> None:
        """Each is a near miss of the real signature, so only the format can reject it."""
        error = expect_failure(headers_for(str(NOW), signature))
        assert error.reason == "malformed_signature"

    @pytest.mark.parametrize(
        "signature",
        [
            "v0=" + "\u00e9" * 64,
            "v0=" + "\u0663" * 64,
            "v0=" + "\uff41" * 64,
            "v0=" + GOOD_HEX[:-1] + "\udcff",
        ],
        ids=["latin-accent", "arabic-indic-digits", "fullwidth-a", "lone-surrogate"],
    )
    def test_non_ascii_signature_is_signature_error_not_type_error(self, signature: str) -> None:
        error = expect_failure(headers_for(str(NOW), signature))
        assert error.reason == "malformed_signature"


class TestBadTimestamp:
    @pytest.mark.parametrize(
        "timestamp",
        [
            "1_000",
            " 1",
            "+1",
            "1 ",
            "\u0661\u0667" + "\u0660" * 8,  # 1700000000 in Arabic-Indic digits
            "17000000000",
            "",
            "-1",
            "1.5",
            "1700000000\n",
            "0x10",
            "1e9",
        ],
        ids=[
            "underscore",
            "leading-space",
            "plus-sign",
            "trailing-space",
            "arabic-indic-digits",
            "11-digits",
            "empty",
            "negative",
            "decimal",
            "trailing-newline",
            "hex",
            "exponent",
        ],
    )
    def test_bad_timestamp(self, timestamp: str) -> None:
        """Signed correctly over the odd timestamp, so only its format can reject it."""
        try:
            clock = float(int(timestamp))  # where int() is lenient, put the clock right on it
        except ValueError:
            clock = NOW
        error = expect_failure(headers_for(timestamp, raw_sign(SECRET, BODY, timestamp)), now=clock)
        assert error.reason == "bad_timestamp"

    @pytest.mark.parametrize("timestamp", ["0", "1", "0001700000", "9999999999"])
    def test_one_to_ten_ascii_digits_are_accepted(self, timestamp: str) -> None:
        result = verify_now(
            headers_for(timestamp, raw_sign(SECRET, BODY, timestamp)), now=int(timestamp)
        )
        assert result.timestamp == int(timestamp)


# --- properties ---------------------------------------------------------------------------

MAX_TS = 9_999_999_999  # ten digits: the largest timestamp the header format allows
timestamps = st.integers(min_value=0, max_value=MAX_TS)
secrets_text = st.text(min_size=1)


class TestProperties:
    @given(secret=secrets_text, body=st.binary(), ts=timestamps)
    def test_sign_then_verify_round_trips(self, secret: str, body: bytes, ts: int) -> None:
        signature = sign(secret, body, ts)
        result = verify(
            headers_for(str(ts), signature), body, [secret], TOLERANCE, clock=fixed_clock(ts)
        )
        assert result == Verified(timestamp=ts, secret_index=0, signature=signature)

    @given(
        secret=secrets_text,
        body=st.binary(min_size=1),
        ts=timestamps,
        position=st.integers(min_value=0),
        flip=st.integers(min_value=1, max_value=255),
    )
    def test_any_changed_body_byte_is_a_mismatch(
        self, secret: str, body: bytes, ts: int, position: int, flip: int
    ) -> None:
        signature = sign(secret, body, ts)
        tampered = bytearray(body)
        tampered[position % len(body)] ^= flip
        with pytest.raises(SignatureError) as info:
            verify(
                headers_for(str(ts), signature),
                bytes(tampered),
                [secret],
                TOLERANCE,
                clock=fixed_clock(ts),
            )
        assert info.value.reason == "signature_mismatch"

    @given(secret=secrets_text, body=st.binary(), ts=timestamps, data=st.data())
    def test_any_changed_timestamp_digit_is_a_mismatch(
        self, secret: str, body: bytes, ts: int, data: st.DataObject
    ) -> None:
        original = str(ts)
        position = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
        digit = data.draw(st.sampled_from(string.digits).filter(lambda d: d != original[position]))
        tampered = original[:position] + digit + original[position + 1 :]
        with pytest.raises(SignatureError) as info:
            verify(
                headers_for(tampered, sign(secret, body, ts)),
                body,
                [secret],
                TOLERANCE,
                clock=fixed_clock(int(tampered)),  # the clock agrees with the forged timestamp
            )
        assert info.value.reason == "signature_mismatch"

    @given(secret=secrets_text, body=st.binary(), ts=timestamps, data=st.data())
    def test_any_changed_hex_character_is_a_mismatch(
        self, secret: str, body: bytes, ts: int, data: st.DataObject
    ) -> None:
        signature = sign(secret, body, ts)
        position = data.draw(st.integers(min_value=3, max_value=len(signature) - 1))
        replacement = data.draw(
            st.sampled_from("0123456789abcdef").filter(lambda c: c != signature[position])
        )
        tampered = signature[:position] + replacement + signature[position + 1 :]
        with pytest.raises(SignatureError) as info:
            verify(headers_for(str(ts), tampered), body, [secret], TOLERANCE, clock=fixed_clock(ts))
        assert info.value.reason == "signature_mismatch"

    @settings(max_examples=200)
    @given(data=st.data(), body=st.binary())
    def test_arbitrary_headers_give_verified_or_signature_error_only(
        self, data: st.DataObject, body: bytes
    ) -> None:
        """Whatever arrives in the two headers (absent, repeated, any text, even lone
        surrogates as aiohttp's surrogateescape decoding can produce), verify returns a
        Verified or raises SignatureError with a known reason, never anything else."""
        any_text = st.text(alphabet=st.characters(exclude_categories=()))
        # Near misses as well as noise, so that inputs reach every check in verify().
        timestamp_values = st.one_of(
            any_text,
            st.from_regex(r"[0-9]{1,12}\n?", fullmatch=True),
            any_text.map(lambda text: str(NOW) + text),
            st.just(str(NOW)),
        )
        signature_values = st.one_of(
            any_text,
            any_text.map(lambda text: "v0=" + text),
            st.from_regex(r"v0=[0-9a-f]{64}", fullmatch=True),
            st.from_regex(r"v0=[0-9a-fA-F]{60,68}\n?", fullmatch=True),
            st.just(sign(SECRET, body, NOW)),
        )
        headers: Mapping[str, str] | CIMultiDict[str]
        if data.draw(st.booleans(), label="multidict"):
            headers = CIMultiDict()
            for name, values in (
                (TIMESTAMP_HEADER, timestamp_values),
                (SIGNATURE_HEADER, signature_values),
            ):
                for value in data.draw(st.lists(values, max_size=2), label=name):
                    headers.add(name, value)
        else:
            headers = {}
            for name, values in (
                (TIMESTAMP_HEADER, timestamp_values),
                (SIGNATURE_HEADER, signature_values),
            ):
                value = data.draw(st.none() | values, label=name)  # None: header absent
                if value is not None:
                    headers[data.draw(st.sampled_from([name, name.lower(), name.upper()]))] = value
        # Any exception other than SignatureError propagates and fails the test.
        outcome = verify_or_error(headers, body, [SECRET, b"second"])
        event("verified" if isinstance(outcome, Verified) else outcome.reason)
        if isinstance(outcome, SignatureError):
            assert outcome.reason in REASONS
        else:
            assert isinstance(outcome, Verified)
            assert outcome.timestamp == NOW
            assert outcome.secret_index == 0

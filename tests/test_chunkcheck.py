"""A chunked request body whose framing is broken is answered ``400`` saying what is wrong, on
every listener built on gateway.closingsite (the ingest, the admin API, /metrics): Twisted's
chunked decoder answered a bare ``400 Bad Request`` with no body."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError

from gateway.chunkcheck import ChunkedBodyCheck
from tests import test_httpchannels
from tests.test_httpheadcheck import assert_refused

HEAD = b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"

#: A chunked body whose framing is broken -> the start of the reason the 400 gives.
BROKEN = {
    b"zz\r\nabc\r\n0\r\n\r\n": b"the chunk size 'zz' of the chunked body is not a hexadecimal number",
    b"0x3\r\nabc\r\n0\r\n\r\n": b"the chunk size '0x3' of the chunked body is not a hexadecimal",
    b"\r\n": b"the chunk size '' of the chunked body is not a hexadecimal",
    b"3\r\nabcd\r\n0\r\n\r\n": b"a chunk of the chunked body is longer than its size says",
    b"3;a\x01b\r\nabc\r\n0\r\n\r\n": b"the chunk extension 'a\\x01b' of the chunked body holds a control character",
    b"1" * 1100: b"a chunk-size line of the chunked body is longer than 1023 bytes",
    b"0\r\n" + b"X-A: " + b"b" * 70000: b"the chunked body's trailers are over 65536 bytes",
}


def _twisted_refuses(body: bytes, cuts: list[int]) -> tuple[bool, bool]:
    """Whether Twisted's decoder refuses ``body`` fed in the pieces ``cuts`` makes, and whether it finished."""
    finished: list[bytes] = []
    decoder = _ChunkedTransferDecoder(lambda data: None, finished.append)
    try:
        for piece in _pieces(body, cuts):
            if finished:
                break
            decoder.dataReceived(piece)
    except _MalformedChunkedDataError:
        return True, False
    return False, bool(finished)


def _we_refuse(body: bytes, cuts: list[int]) -> tuple[bool, bool]:
    check = ChunkedBodyCheck()
    for piece in _pieces(body, cuts):
        if check.done:
            break
        if check.feed(piece) is not None:
            return True, False
    return False, check.done


def _pieces(body: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


class ChunkedFramingTests(SynchronousTestCase):
    """Each broken framing is answered once, in plain text saying why, and closed; the resource
    never sees it. What Twisted's decoder takes is still taken."""

    setUp = test_httpchannels.ClosingSiteTests.setUp
    connect = test_httpchannels.ClosingSiteTests.connect

    def test_each_is_answered_with_its_reason(self) -> None:
        """Whole, and a byte at a time (a long one: 1000 bytes at a time); the reason comes as
        soon as the fault is in."""
        for body, reason in BROKEN.items():
            for whole in (True, False):
                with self.subTest(body=body[:40], whole=whole):
                    channel, transport = self.connect()
                    channel.dataReceived(HEAD)
                    step = 1 if len(body) < 2000 else 1000
                    for piece in [body] if whole else [body[i:i + step] for i in range(0, len(body), step)]:
                        channel.dataReceived(piece)
                    assert_refused(self, transport, b"400 Bad Request", reason)
                    self.assertEqual(self.resource.held, [])
                    channel.connectionLost(None)

    def test_well_formed_bodies_are_served_and_the_next_request_too(self) -> None:
        """Chunks with extensions and trailers, in one read with a pipelined request behind, and a
        byte at a time: served, then the next request on the same connection."""
        body = b"3;name=\"v\"\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n"
        for whole in (True, False):
            channel, transport = self.connect()
            data = HEAD + body + test_httpchannels.GET
            for piece in [data] if whole else [data[i:i + 1] for i in range(len(data))]:
                channel.dataReceived(piece)
            self.assertEqual(self.resource.held[0].content.read(), b"abc0123456789")
            self.resource.answer()
            self.resource.answer()
            self.assertEqual(transport.value().count(b" 200 OK\r\n"), 2, whole)
            channel.connectionLost(None)

    def test_it_refuses_exactly_what_twisteds_decoder_refuses(self) -> None:
        """3000 random chunked bodies, well-formed and damaged (bytes flipped, dropped or put in,
        sizes wrong, long lines, trailers), fed in random pieces: refused by the check exactly
        when Twisted's decoder refuses them, and ended exactly when it ends them."""
        rng = random.Random(7)
        alphabet = b"0123456789abcdefABCDEFxyz;=\" \t\r\n\\\x00\x7f\xff"
        refused = 0
        for n in range(3000):
            chunks = []
            for _ in range(rng.randint(0, 4)):
                data = bytes(rng.choice(b"abc\r\n") for _ in range(rng.randint(1, 20)))
                ext = rng.choice([b"", b";x", b";x=\"y\"", b"; a=b"])
                chunks.append(b"%x%s\r\n%s\r\n" % (len(data), ext, data))
            trailers = b"".join(b"X-%d: v\r\n" % i for i in range(rng.randint(0, 2)))
            body = bytearray(b"".join(chunks) + b"0\r\n" + trailers + b"\r\n")
            for _ in range(rng.choice([0, 0, 1, 2, 3])):
                at = rng.randrange(len(body) + 1)
                how = rng.random()
                if how < 0.4 and at < len(body):
                    body[at] = rng.choice(alphabet)
                elif how < 0.7 and at < len(body):
                    del body[at]
                else:
                    body[at:at] = bytes([rng.choice(alphabet)])
            if n % 100 == 0:
                body[0:0] = b"1" * rng.choice([1022, 1023, 1024, 1025])
            cuts = sorted(rng.randrange(len(body) + 1) for _ in range(rng.randint(0, 5)))
            ours, theirs = _we_refuse(bytes(body), cuts), _twisted_refuses(bytes(body), cuts)
            self.assertEqual(ours, theirs, (n, bytes(body), cuts))
            refused += ours[0]
        self.assertGreater(refused, 500)
        self.assertLess(refused, 2500)

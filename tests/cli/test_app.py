"""qgnet-app as an HTTP server on a network (issue 22 §5), tested over real sockets.

A stub segmenter stands in for the model (the HTTP layer is under test; the model's answer
through the same functions is checked in tests/model/test_predict.py). Every malformed
request must get a 4xx JSON answer, with no dropped connection and no server traceback; an
image above 4096 px a side is refused from its header (413) without taking the model's lock.
"""
from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cli.app import MAX_BODY, make_server


class StubSegmenter:
    """prepare_supports / predict_prepared of :class:`model.predict.Segmenter` without a
    network: the mask is the query's bright pixels. ``hold`` makes predictions wait (the
    model's lock stays taken) until ``release`` is set."""

    crop = 33

    def __init__(self):
        self.hold = False
        self.inside, self.release = threading.Event(), threading.Event()

    def prepare_supports(self, images, masks, *, mask_value=None, names=None):
        from model.predict import support_label

        labels = [support_label(m, name=n) for m, n in zip(masks, names or ["mask"], strict=True)]
        return torch.zeros(len(images), 3, 2, 2), torch.from_numpy(np.stack([lab[:2, :2] for lab in labels]))

    def predict_prepared(self, queries, supports, masks, *, batch_size=1):
        if self.hold:
            self.inside.set()
            assert self.release.wait(30)
        return [np.asarray(q).mean(axis=2) > 128 for q in queries]


def png_url(array) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def header_only_png(w: int, h: int) -> str:
    """A PNG whose header says ``w x h`` and whose pixel data is cut off: decoding it fails,
    so only a check of the header can tell it is too large."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)[:20]))
    return "data:image/png;base64," + base64.b64encode(data).decode()


SUPPORT = np.full((40, 40, 3), 200, np.uint8)
MASK = np.zeros((40, 40), np.uint8)
MASK[10:30, 10:30] = 1
GOOD = {"support": png_url(SUPPORT), "support_mask": png_url(MASK), "mask_kind": "file",
        "queries": [{"name": "q.png", "data": png_url(SUPPORT)}]}


@pytest.fixture
def server():
    seg = StubSegmenter()
    srv = make_server(seg, "stub", port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv, seg
    finally:
        seg.release.set()
        srv.shutdown()
        srv.server_close()


def exchange(srv, data: bytes, *, close_write: bool = False, wait: float = 10.0):
    """Send raw bytes, read the whole answer: ``(status, json body, seconds)``; status 0 if
    the server closed without answering, -1 if it did not answer within ``wait`` s."""
    t0 = time.perf_counter()
    with socket.create_connection(srv.server_address[:2], timeout=wait) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            if not got:
                return -1, None, time.perf_counter() - t0
    if not got:
        return 0, None, time.perf_counter() - t0
    head, _, body = got.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None, time.perf_counter() - t0


def post(body: bytes, *, length: str | None = None, extra: str = "") -> bytes:
    n = str(len(body)) if length is None else length
    return (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\n{extra}\r\n").encode() + body


def post_json(obj) -> bytes:
    return post(json.dumps(obj).encode())


MALFORMED = {
    "Content-Length -1": (post(b"x" * 5000, length="-1"), 400, "Content-Length must be a number"),
    "Content-Length abc": (post(b"{}", length="abc"), 400, "Content-Length must be a number"),
    "no Content-Length": (b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n", 411, "Content-Length"),
    "chunked": (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                411, "chunked"),
    "above 256 MiB": (post(b"{", length=str(MAX_BODY + 1)), 413, "more than 256 MiB"),
    "a JSON list": (post(b"[1, 2]"), 400, "must be a JSON object"),
    "queries as a string": (post_json({**GOOD, "queries": "abc"}), 400, "queries must be a list"),
    "queries of strings": (post_json({**GOOD, "queries": ["a"]}), 400, "queries must be a list"),
    "not UTF-8": (post(b'{"support": "\xff\xfe"}'), 400, "not UTF-8"),
    "not JSON": (post(b"{support"), 400, "not JSON"),
    "support a number": (post_json({**GOOD, "support": 5}), 400, "support image: expected a data"),
    "support not an image": (post_json({**GOOD, "support": "data:image/png;base64,AAAA"}), 400,
                             "support image: cannot read the image"),
    "empty mask": (post_json({**GOOD, "support_mask": png_url(np.zeros((40, 40), np.uint8))}), 400,
                   "no non-zero pixel"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_every_malformed_request_gets_a_4xx_json_answer(server, capfd, case):
    """Before: Content-Length -1 read until the client closed (270 MiB past the limit), and
    a list body, queries as a string, a non-UTF-8 body or Content-Length abc closed the
    connection with no answer and a traceback on the server."""
    srv, _ = server
    data, status, words = MALFORMED[case]
    got, body, _ = exchange(srv, data)  # the client keeps its side open: no EOF to wait for
    assert got == status, (case, got, body)
    assert set(body) == {"error"} and words in body["error"], (case, body)
    assert "Traceback" not in capfd.readouterr().err
    got, body, _ = exchange(srv, post_json(GOOD))  # and the server still serves
    assert got == 200 and body["results"][0]["mask_name"] == "q.png"


def test_a_short_body_is_answered_not_waited_for(server):
    srv, _ = server
    got, body, _ = exchange(srv, post(b'{"a": 1}', length="100"), close_write=True)
    assert got == 400 and "ended after 8 of 100 bytes" in body["error"]


def test_a_huge_image_is_refused_from_its_header_without_the_lock(server, capfd):
    """Before: a 105 KB PNG of 81 megapixels was decoded and segmented under the global
    lock for 26 s, blocking every other request."""
    srv, seg = server
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")  # 81 Mpx in ~10 KB
    huge = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    seg.hold = True  # a slow request holds the model's lock ...
    slow = threading.Thread(target=exchange, args=(srv, post_json(GOOD)), kwargs={"wait": 60})
    slow.start()
    assert seg.inside.wait(30)
    try:  # ... and the huge ones are still answered at once, the lock untouched
        for body, what in ((GOOD | {"queries": [{"name": "big.png", "data": huge}]}, "big.png"),
                           (GOOD | {"queries": [{"name": "cut.png", "data": header_only_png(9000, 9000)}]},
                            "cut.png"),
                           (GOOD | {"support": huge}, "support image")):
            got, answer, secs = exchange(srv, post_json(body))
            assert got == 413, answer
            assert answer["error"].startswith(f"{what}: 9000 x 9000 pixels, more than 4096 a side")
            assert secs < 5
        assert seg.inside.is_set() and not seg.release.is_set()  # still held throughout
    finally:
        seg.release.set()
        slow.join(60)
    at_limit = GOOD | {"queries": [{"name": "ok.png", "data": header_only_png(4096, 16)}]}
    got, answer, _ = exchange(srv, post_json(at_limit))  # 4096 is allowed: decoded, then fails
    assert got == 200 and "cannot read the image" in answer["results"][0]["error"]
    assert "Traceback" not in capfd.readouterr().err

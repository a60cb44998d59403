"""``qgnet-app``: a web page to try a model on your own photos (no extra dependency).

Upload a support photo, paint the object on it (or give a mask file), drop query photos,
see the overlays and download the masks. One page (``cli/static/app.html``, plain
HTML + JavaScript) served by the standard library's HTTP server on localhost; the model is
loaded once and every request goes through :class:`model.predict.Segmenter`, the same
path as ``qgnet-predict``. We chose this over gradio, the ecosystem's usual choice, because
the page needs four widgets and gradio would add dozens of packages (a web framework, an
ASGI server, pandas) to an offline research toolkit.

Endpoints: ``GET /`` the page, ``GET /info`` the model, ``POST /predict`` JSON
``{support, support_mask, mask_kind: "paint"|"file", queries: [{name, data}]}`` with data
URLs; answer ``{results: [{name, overlay, mask, mask_name, foreground} | {name, error}],
seconds}``.

On a network (``--host 0.0.0.0``) every request gets a JSON answer: a malformed one (bad
Content-Length, a body that is not UTF-8 JSON or not an object, fields of the wrong type)
a 400/411, a body above 256 MiB or an image above 4096 px a side (the ``qgnet-prep``
limit, checked from the image header before anything is decoded) a 413. Only the model
runs under the server's one lock.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

from cli._errors import friendly_errors
from pipeline.errors import ConfigError, QgnetError
from pipeline.store import MAX_MAP_SIDE

PAGE = Path(__file__).with_name("static") / "app.html"
MAX_BODY = 256 * 2**20  # bytes of one request
READ_TIMEOUT_S = 60  # a client that stops sending mid-request is dropped after this


class TooLarge(ConfigError):
    """A request or an image above the server's limits: answered with HTTP 413."""


def _open_checked(raw: bytes, *, what: str):
    """``PIL.Image.open`` (header only) of ``raw``, refusing an image with a side above
    :data:`pipeline.store.MAX_MAP_SIDE` (4096 px, the limit of ``qgnet-prep``) before any
    pixel is decoded: a 105 KB PNG of 9000 x 9000 took 26 s to decode and segment."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as exc:  # PIL's own limit, above ours
        raise TooLarge(f"{what}: {exc}; the limit is {MAX_MAP_SIDE} pixels a side") from None
    w, h = im.size
    if max(w, h) > MAX_MAP_SIDE:
        im.close()
        raise TooLarge(f"{what}: {w} x {h} pixels, more than {MAX_MAP_SIDE} a side (the limit of "
                       f"qgnet-prep); downscale it")
    return im


def _payload(data_url, *, what: str) -> bytes:
    if not isinstance(data_url, str):
        raise ConfigError(f"{what}: expected a data:image/...;base64 URL, got a "
                          f"{type(data_url).__name__}")
    try:
        payload = data_url.split(",", 1)[1] if data_url.startswith("data:") else data_url
        return base64.b64decode(payload, validate=False)
    except (ValueError, IndexError) as exc:  # binascii.Error is a ValueError
        raise ConfigError(f"{what}: cannot read the image (not base64: {exc})") from None


def check_image(data_url, *, what: str) -> bytes:
    """The image bytes of a data URL, after the size check (nothing decoded): raises
    :class:`TooLarge` for an image above the limit, :class:`ConfigError` for one that is
    not an image."""
    raw = _payload(data_url, what=what)
    try:
        _open_checked(raw, what=what).close()
    except TooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable upload is the user's to fix
        raise ConfigError(f"{what}: cannot read the image ({type(exc).__name__}: {exc})") from None
    return raw


def decode_image(data_url, *, what: str, keep_alpha: bool = False):
    """A ``data:image/...;base64,`` URL -> H x W x 3 uint8 RGB (or H x W x 4 with alpha);
    an image with a side above 4096 px is refused (:class:`TooLarge`) before decoding."""
    import numpy as np
    from PIL import ImageOps

    raw = data_url if isinstance(data_url, bytes) else _payload(data_url, what=what)
    try:
        with _open_checked(raw, what=what) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if keep_alpha:
                return np.asarray(im.convert("RGBA"))
            if im.mode in ("L", "P", "1") and what.endswith("mask"):
                return np.asarray(im.convert("L") if im.mode == "1" else im)
            return np.asarray(im.convert("RGB"))
    except TooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - any undecodable upload is the user's to fix
        raise ConfigError(f"{what}: cannot read the image ({type(exc).__name__}: {exc})") from None


def encode_png(array) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def encode_jpeg(array) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_request(body) -> dict:
    """The page's JSON -> the decoded support, its mask and the checked queries, without
    the model (the server does this outside its lock). Raises :class:`ConfigError` (400)
    for a malformed request or support, :class:`TooLarge` (413) for any image above 4096 px
    a side; a query that is not an image becomes an ``error`` entry of the answer."""
    import numpy as np

    if not isinstance(body, dict):
        raise ConfigError(f"the request must be a JSON object {{support, support_mask, "
                          f"mask_kind, queries}}, got a JSON {type(body).__name__}")
    if not body.get("support") or not body.get("support_mask"):
        raise ConfigError("a support image and its mask (painted or a file) are needed")
    queries = body.get("queries") or []
    if not isinstance(queries, list) or not all(isinstance(q, dict) for q in queries):
        raise ConfigError("queries must be a list of {name, data} objects")
    support = decode_image(body["support"], what="support image")
    if body.get("mask_kind") == "paint":  # the paint layer: painted where alpha > 0
        rgba = decode_image(body["support_mask"], what="painted mask", keep_alpha=True)
        mask = (rgba[..., 3] > 0).astype(np.uint8)
    else:
        mask = decode_image(body["support_mask"], what="support mask")
    checked = []
    for q in queries:
        name = str(q.get("name") or "query")
        try:
            checked.append({"name": name, "raw": check_image(q.get("data", ""), what=name)})
        except TooLarge:
            raise
        except ConfigError as exc:
            checked.append({"name": name, "error": str(exc)})
    return {"support": support, "mask": mask, "queries": checked}


def predict_request(seg, request: dict) -> dict:
    """A :func:`parse_request` result -> the page's answer (the model's part: run it under
    the server's lock). Queries are decoded one at a time, each at most 4096 px a side."""
    import numpy as np

    from cli.predict import overlay

    s, m = seg.prepare_supports([request["support"]], [request["mask"]], names=["support mask"])
    t0 = time.perf_counter()
    results = []
    for q in request["queries"]:
        name = q["name"]
        if "error" in q:
            results.append({"name": name, "error": q["error"]})
            continue
        try:
            image = decode_image(q["raw"], what=name)
        except ConfigError as exc:
            results.append({"name": name, "error": str(exc)})
            continue
        (pred,) = seg.predict_prepared([image], s, m, batch_size=1)
        results.append({"name": name, "overlay": encode_jpeg(overlay(image, pred)),
                        "mask": encode_png(pred.astype(np.uint8) * 255),
                        "mask_name": Path(name).stem + ".png",
                        "foreground": float(pred.mean())})
    return {"results": results, "seconds": time.perf_counter() - t0}


def handle_predict(seg, body) -> dict:
    """The page's request -> its answer (pure: no HTTP). Raises ConfigError for a bad
    request or support, TooLarge for an image above the limit."""
    return predict_request(seg, parse_request(body))


class HttpError(Exception):
    """A request refused before its body is read: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def content_length(headers) -> int:
    """The request's body size from its headers, or :class:`HttpError` (411 missing or
    chunked, 400 not a number of bytes, 413 above :data:`MAX_BODY`)."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        raise HttpError(411, "send the body with a Content-Length (chunked bodies are not read)")
    text = headers.get("Content-Length")
    if text is None:
        raise HttpError(411, "a POST needs a Content-Length header")
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise HttpError(400, f"Content-Length must be a number of bytes, got {text[:40]!r}")
    n = int(text)
    if n > MAX_BODY:
        raise HttpError(413, f"request of {n >> 20} MiB, more than {MAX_BODY >> 20} MiB; send "
                             f"fewer or smaller images")
    return n


def parse_body(raw: bytes):
    """The request body as JSON, or :class:`ConfigError` naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the request body is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    try:
        return json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the request body is not JSON ({exc})") from None


def make_server(seg, model_name: str, *, host: str = "127.0.0.1", port: int = 7860
                ) -> ThreadingHTTPServer:
    """An HTTP server for the page (``port=0``: any free port; see ``server_address``).

    Every request gets an answer: malformed ones a 4xx JSON ``{"error": ...}`` (400 bad
    JSON / fields / images, 411 no length, 413 too large), a bug a 500 JSON answer (and
    its traceback on the server's stderr). Images are checked and the support decoded
    before the model's lock is taken, so a bad or huge upload never blocks other requests.
    """
    import sys
    import traceback

    page = PAGE.read_bytes()
    lock = threading.Lock()  # one forward at a time: the model is not re-entrant on GPU

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S  # socket timeout of every read: no connection held forever

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if code >= 400:
                    self.send_header("Connection", "close")
                    self.close_connection = True  # an unread body must not become a request
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client left; nothing to tell
                self.close_connection = True

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif self.path == "/info":
                self._json(200, {"model": model_name, "crop": seg.crop})
            else:
                self._json(404, {"error": f"no page {self.path}"})

        def do_POST(self):  # noqa: N802
            if self.path != "/predict":
                return self._json(404, {"error": f"no endpoint {self.path}"})
            try:
                n = content_length(self.headers)
                raw = self.rfile.read(n)
                if len(raw) < n:
                    raise HttpError(400, f"the body ended after {len(raw)} of {n} bytes")
                request = parse_request(parse_body(raw))  # outside the lock
                with lock:
                    answer = predict_request(seg, request)
                self._json(200, answer)
            except HttpError as exc:
                self._json(exc.status, {"error": str(exc)})
            except TooLarge as exc:
                self._json(413, {"error": str(exc)})
            except QgnetError as exc:
                self._json(400, {"error": str(exc)})
            except TimeoutError:
                self._json(408, {"error": f"the body did not arrive within {READ_TIMEOUT_S} s"})
            except Exception as exc:  # noqa: BLE001 - a bug: answer, and keep its traceback
                traceback.print_exc(file=sys.stderr)
                self._json(500, {"error": f"internal error ({type(exc).__name__}); see the "
                                          f"server's log"})

        def log_message(self, fmt, *args):  # quiet: one line per request on stderr is noise
            pass

    return ThreadingHTTPServer((host, port), Handler)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="A bundle from `qgnet-export` (model.qgnet) or a best.pt of `qgnet-train fss`.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@friendly_errors
def main(model_path, host, port, device):
    """Serve a page to segment your own photos with a trained model."""
    from model.predict import Segmenter

    seg = Segmenter.load(model_path, device=device)
    server = make_server(seg, Path(model_path).name, host=host, port=port)
    h, p = server.server_address[:2]
    click.echo(f"qgnet-app: open http://{h}:{p}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

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

PAGE = Path(__file__).with_name("static") / "app.html"
MAX_BODY = 256 * 2**20  # bytes of one request


def decode_image(data_url: str, *, what: str, keep_alpha: bool = False):
    """A ``data:image/...;base64,`` URL -> H x W x 3 uint8 RGB (or H x W x 4 with alpha)."""
    import numpy as np
    from PIL import Image, ImageOps

    from pipeline.errors import ConfigError

    try:
        payload = data_url.split(",", 1)[1] if data_url.startswith("data:") else data_url
        with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if keep_alpha:
                return np.asarray(im.convert("RGBA"))
            if im.mode in ("L", "P", "1") and what.endswith("mask"):
                return np.asarray(im.convert("L") if im.mode == "1" else im)
            return np.asarray(im.convert("RGB"))
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


def handle_predict(seg, body: dict) -> dict:
    """The page's request -> its answer (pure: no HTTP). Raises ConfigError for a bad support."""
    import numpy as np

    from cli.predict import overlay
    from pipeline.errors import ConfigError

    if not body.get("support") or not body.get("support_mask"):
        raise ConfigError("a support image and its mask (painted or a file) are needed")
    support = decode_image(body["support"], what="support image")
    if body.get("mask_kind") == "paint":  # the paint layer: painted where alpha > 0
        rgba = decode_image(body["support_mask"], what="painted mask", keep_alpha=True)
        mask = (rgba[..., 3] > 0).astype(np.uint8)
    else:
        mask = decode_image(body["support_mask"], what="support mask")
    s, m = seg.prepare_supports([support], [mask], names=["support mask"])
    t0 = time.perf_counter()
    results = []
    for q in body.get("queries") or []:
        name = str(q.get("name") or "query")
        try:
            image = decode_image(q.get("data", ""), what=name)
        except ConfigError as exc:
            results.append({"name": name, "error": str(exc)})
            continue
        (pred,) = seg.predict_prepared([image], s, m, batch_size=1)
        results.append({"name": name, "overlay": encode_jpeg(overlay(image, pred)),
                        "mask": encode_png(pred.astype(np.uint8) * 255),
                        "mask_name": Path(name).stem + ".png",
                        "foreground": float(pred.mean())})
    return {"results": results, "seconds": time.perf_counter() - t0}


def make_server(seg, model_name: str, *, host: str = "127.0.0.1", port: int = 7860
                ) -> ThreadingHTTPServer:
    """An HTTP server for the page (``port=0``: any free port; see ``server_address``)."""
    from pipeline.errors import QgnetError

    page = PAGE.read_bytes()
    lock = threading.Lock()  # one forward at a time: the model is not re-entrant on GPU

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

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
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                return self._json(413, {"error": f"request of {n >> 20} MiB; send fewer images"})
            try:
                body = json.loads(self.rfile.read(n) or b"{}")
                with lock:
                    self._json(200, handle_predict(seg, body))
            except (QgnetError, json.JSONDecodeError) as exc:
                self._json(400, {"error": str(exc)})

        def log_message(self, fmt, *args):  # quiet: one line per request on stderr is noise
            pass

    return ThreadingHTTPServer((host, port), Handler)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="A bundle from `qgnet-export` (model.fss.qgnet) or a best.pt of `qgnet-train fss`.")
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

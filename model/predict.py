"""Use a trained few-shot model on your own images: a one-file bundle and a numpy API.

"Here is one photo with the object outlined; find it in these 500 photos"::

    >>> from model.predict import Segmenter                                # doctest: +SKIP
    >>> seg = Segmenter.load("model.qgnet", device="cpu")                  # doctest: +SKIP
    >>> masks = seg.predict([query_rgb], [support_rgb], [support_mask])    # doctest: +SKIP
    >>> masks[0].shape == query_rgb.shape[:2], masks[0].dtype             # doctest: +SKIP
    (True, dtype('bool'))

Images are ``H x W x 3`` uint8 RGB arrays of any size; support masks are ``H x W`` arrays
whose non-zero pixels are the object (255 = ignore, as in the datasets). Several supports
are K shots of one class, averaged inside the network exactly as in training.

The test-time path is the evaluator's own: :func:`model.fss.transforms.test_transform` for
queries and supports, the network, :func:`model.fss.metrics.upsample_logits` back to the
query's original size. For a query and supports taken from an episode file the mask is the
one ``qgnet-eval fss`` scores (tests/model/test_predict.py checks it).

The bundle (``qgnet-export``) is one ``torch.save`` dict loadable with
``weights_only=True``::

    format          "qgnet-model"           format_version  1
    model_meta      the checkpoint's network description (backbone names, crop, bins, ...)
    stems           ResNet stem of each backbone ("standard" / "deep"), for rebuilding
    state_dict      every weight: F, Fp, the trainable head
    source          the checkpoint it came from, its step and validation mIoU
    qgnet_version   the code version that wrote it

It needs neither the training cache nor the original backbone / prior weight files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from model.fss.metrics import upsample_logits
from model.fss.transforms import IGNORE, test_transform
from pipeline.errors import CheckpointError, ConfigError

BUNDLE_FORMAT = "qgnet-model"
BUNDLE_VERSION = 1
BUNDLE_SUFFIX = ".qgnet"


# ---------------------------------------------------------------------------- the bundle
def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file; pass a bundle written by "
                              f"`qgnet-export` or a best.pt of `qgnet-train fss`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip/EOF errors: one message for all
        raise CheckpointError(f"{path}: not a readable model file ({type(exc).__name__}); pass "
                              f"a bundle written by `qgnet-export` or a best.pt of "
                              f"`qgnet-train fss`") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a qgnet model")
    return obj


def _stems(model: torch.nn.Module) -> dict[str, str]:
    out = {}
    for key in ("backbone", "prior_backbone"):
        bb = getattr(model, key, None)
        if bb is not None:
            out[key] = str(getattr(bb, "stem", "standard"))
    return out


def export_bundle(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the self-contained bundle of a ``qgnet-train fss`` checkpoint to ``out``.

    The frozen backbones are rebuilt from the files the checkpoint names (they must still
    exist here, once) and saved with the trainable head, so the bundle needs nothing else.
    """
    from importlib import metadata

    from model.checkpoint import save_atomic
    from model.fss.build import load_model
    from pipeline.fileio import remove_stale_temporaries

    obj = _read(checkpoint)
    if obj.get("format") == BUNDLE_FORMAT:
        raise CheckpointError(f"{checkpoint} is already a model bundle; copy it instead")
    if Path(out).exists() and Path(out).resolve() == Path(checkpoint).resolve():
        raise ConfigError(f"--out {out} is the checkpoint itself; write the bundle to another "
                          f"file (e.g. model.qgnet)")
    model, ckpt = load_model(checkpoint)
    try:
        version = metadata.version("qgnet")
    except metadata.PackageNotFoundError:  # running from a source tree
        version = "unknown"
    bundle = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
        "model_meta": dict(ckpt["model_meta"]), "stems": _stems(model),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "source": {"checkpoint": str(Path(checkpoint).resolve()), "step": ckpt.get("step"),
                   "best_miou": ckpt.get("best_miou")},
        "qgnet_version": version,
    }
    out = Path(out)
    remove_stale_temporaries(out.parent, base=out.name)  # <out>.tmp<pid> of a killed export
    return save_atomic(bundle, out)  # disk full / read-only: one OSError, no temporary left


#: what :func:`model.fss.build.build_model` reads from a model meta (``prior`` and
#: ``prior_backbone`` only with the prior map)
META_KEYS = ("backbone", "weights", "use_prior_map", "crop")
PRIOR_META_KEYS = ("prior", "prior_backbone")


def _reexport(bundle: Mapping[str, Any], path: Path) -> str:
    """The fix for a damaged bundle: export it again, from the checkpoint it names if any."""
    source = bundle.get("source")
    ckpt = source.get("checkpoint") if isinstance(source, Mapping) else None
    return (f"re-export it: qgnet-export --checkpoint {ckpt if isinstance(ckpt, str) else 'best.pt'}"
            f" --out {path}")


def check_meta(meta: Any, path: Path, *, what: str, fix: str) -> dict[str, Any]:
    """The ``model_meta`` of a ``what`` ("bundle", "checkpoint") as a dict, or
    :class:`CheckpointError` naming the file, what is wrong (empty, not a dict, a key
    missing) and ``fix``."""
    if not isinstance(meta, Mapping) or not meta:
        got = "empty" if isinstance(meta, Mapping) else f"a {type(meta).__name__}"
        raise CheckpointError(f"{path}: the {what}'s model_meta (the network description) is "
                              f"{got}; {fix}")
    keys = META_KEYS + (PRIOR_META_KEYS if meta.get("use_prior_map") else ())
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: the {what}'s model_meta lacks {', '.join(missing)}; {fix}")
    return dict(meta)


def _build_from_bundle(bundle: Mapping[str, Any], path: Path):
    from model.fss.build import build_model

    fix = _reexport(bundle, path)
    if bundle.get("format_version") != BUNDLE_VERSION:
        raise CheckpointError(f"{path}: bundle format {bundle.get('format_version')!r}, this "
                              f"qgnet reads {BUNDLE_VERSION}; re-export it with this version")
    meta = check_meta(bundle.get("model_meta"), path, what="bundle", fix=fix)
    state = bundle.get("state_dict")
    if not isinstance(state, Mapping) or not state:
        got = "no state_dict" if state is None else (
            "an empty state_dict" if isinstance(state, Mapping) else
            f"a {type(state).__name__} as state_dict")
        raise CheckpointError(f"{path}: the bundle holds {got} (the weights); {fix}")
    stems = bundle.get("stems") or {}
    try:
        model = build_model(meta, stems=stems if isinstance(stems, Mapping) else {})
    except (KeyError, ValueError, TypeError) as exc:  # a value the network cannot be built from
        raise CheckpointError(f"{path}: the bundle's model_meta does not describe a network "
                              f"this qgnet builds ({type(exc).__name__}: {exc}); {fix}") from None
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the network the bundle describes "
                              f"({str(exc).splitlines()[0]}); {fix}") from None
    return model


def load_network(path: str | Path, *, device: str | torch.device = "cpu"):
    """(model in eval mode, model_meta) from a bundle or a ``qgnet-train fss`` checkpoint."""
    from model.fss.build import load_model

    path = Path(path)
    obj = _read(path)
    if obj.get("format") == BUNDLE_FORMAT:
        model = _build_from_bundle(obj, path)
        return model.to(device).eval(), dict(obj["model_meta"])
    if "model_meta" in obj:  # a best.pt / last.pt
        check_meta(obj["model_meta"], path, what="checkpoint",
                   fix="pass a best.pt / last.pt written by `qgnet-train fss`")
        try:
            model, ckpt = load_model(path, device=device)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(path) in str(exc):
                raise CheckpointError(str(exc)) from None  # load_model's "does not fit"
            raise CheckpointError(f"{path}: the checkpoint's model_meta does not describe a "
                                  f"network this qgnet builds ({type(exc).__name__}: {exc})"
                                  ) from None
        return model.eval(), dict(ckpt["model_meta"])
    raise CheckpointError(f"{path}: neither a model bundle nor a few-shot checkpoint (a prior "
                          f"extractor or another file?); pass a bundle written by "
                          f"`qgnet-export` or a best.pt of `qgnet-train fss`")


# ---------------------------------------------------------------------------- inputs
def support_label(mask: np.ndarray, *, mask_value: int | None = None,
                  name: str = "support mask") -> np.ndarray:
    """An ``H x W`` support mask -> episode label (1 object, 0 background, 255 ignore).

    ``mask_value`` picks one class of a multi-class mask; ``None``: any non-zero value
    except 255 (ignored), or, in a mask holding only 0 and 255, the 255 pixels. Raises
    :class:`ConfigError` for an RGB or empty mask.
    """
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] in (3, 4):
        if not (np.all(m[..., 0] == m[..., 1]) and np.all(m[..., 1] == m[..., 2])):
            raise ConfigError(f"{name}: an RGB image, not a mask; save a single-channel PNG "
                              f"(L or palette mode) with 0 = background, the object non-zero")
        m = m[..., 0]
    if m.ndim != 2:
        raise ConfigError(f"{name}: expected an H x W mask, got shape {m.shape}")
    binary = mask_value is None and bool(np.isin(m, (0, IGNORE)).all())
    if binary:  # a 0/255 mask (what qgnet-predict writes, what most tools save): 255 = object
        obj = m == IGNORE
    elif mask_value is None:
        obj = (m != 0) & (m != IGNORE)
    else:
        obj = m == int(mask_value)
    if not obj.any():
        what = "no non-zero pixel" if mask_value is None else f"no pixel of value {mask_value}"
        values = sorted(int(v) for v in np.unique(m))[:10]
        raise ConfigError(f"{name}: {what} (values present: {values}); outline the object, or "
                          f"pick its value with --mask-value")
    out = obj.astype(np.uint8)
    if not binary and mask_value != IGNORE:
        out[m == IGNORE] = IGNORE  # ignored pixels carry no vote, as in the datasets
    return out


def _check_pair(image: np.ndarray, mask: np.ndarray, name: str) -> None:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"{name}: expected an H x W x 3 uint8 RGB image, got "
                          f"{image.dtype} {image.shape}")
    if image.shape[:2] != np.asarray(mask).shape[:2]:
        raise ConfigError(f"{name}: mask is {np.asarray(mask).shape[1]} x "
                          f"{np.asarray(mask).shape[0]} but its image is {image.shape[1]} x "
                          f"{image.shape[0]} (width x height); they must match")


# ---------------------------------------------------------------------------- the API
class Segmenter:
    """A trained few-shot network ready for images: numpy in, numpy out.

    Use :meth:`load`; :meth:`predict` takes queries and K supports of one class.
    """

    def __init__(self, model: torch.nn.Module, meta: Mapping[str, Any], *,
                 device: torch.device, amp: bool = True) -> None:
        self.model, self.meta, self.device, self.amp = model, dict(meta), device, amp
        self.crop = int(meta["crop"])

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", amp: bool = True) -> Segmenter:
        """From a ``.qgnet`` bundle or a ``best.pt``; ``device``: "cpu", "cuda", "auto"."""
        from model.utils import pick_device

        dev = pick_device(device)
        model, meta = load_network(path, device=dev)
        return cls(model, meta, device=dev, amp=amp)

    def prepare_supports(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                         mask_value: int | None = None, names: Sequence[str] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """K supports -> (K x 3 x S x S, K x S x S) network inputs, after the checks."""
        if len(images) == 0 or len(images) != len(masks):
            raise ConfigError(f"need one mask per support image and at least one support; got "
                              f"{len(images)} images and {len(masks)} masks")
        names = list(names) if names else [f"support {i + 1}" for i in range(len(images))]
        imgs, labs = [], []
        for image, mask, name in zip(images, masks, names, strict=True):
            _check_pair(image, np.asarray(mask)[..., 0] if np.asarray(mask).ndim == 3
                        else mask, name)
            lab = support_label(mask, mask_value=mask_value, name=name)
            img, lab = test_transform(np.asarray(image), lab, size=self.crop)
            imgs.append(img)
            labs.append(lab)
        return (torch.from_numpy(np.stack(imgs)),
                torch.from_numpy(np.stack(labs).astype(np.int64)))

    @torch.no_grad()
    def predict_prepared(self, queries: Sequence[np.ndarray], supports: torch.Tensor,
                         support_masks: torch.Tensor, *, batch_size: int = 8
                         ) -> list[np.ndarray]:
        """Queries (H x W x 3 uint8 each) against supports from :meth:`prepare_supports`."""
        from model.utils import autocast

        out: list[np.ndarray] = []
        s = supports.to(self.device)[None]  # 1 x K x 3 x S x S
        m = support_masks.to(self.device)[None]  # 1 x K x S x S
        for i in range(0, len(queries), max(1, int(batch_size))):
            chunk = [np.asarray(q) for q in queries[i:i + batch_size]]
            for j, q in enumerate(chunk):
                if q.ndim != 3 or q.shape[2] != 3 or q.dtype != np.uint8:
                    raise ConfigError(f"query {i + j + 1}: expected an H x W x 3 uint8 RGB "
                                      f"image, got {q.dtype} {q.shape}")
            x = torch.from_numpy(np.stack([
                test_transform(q, np.zeros(q.shape[:2], np.uint8), size=self.crop)[0]
                for q in chunk])).to(self.device)  # n x 3 x S x S
            n = x.shape[0]
            with autocast(self.device, enabled=self.amp):
                logits = self.model(x, s.expand(n, *s.shape[1:]), m.expand(n, *m.shape[1:]))
            for j, q in enumerate(chunk):  # back to each query's own size
                pred = upsample_logits(logits[j:j + 1].float(), q.shape[:2], protocol="exact")
                out.append(pred.cpu().numpy().astype(bool))
        return out

    def predict(self, query_images: Sequence[np.ndarray], support_images: Sequence[np.ndarray],
                support_masks: Sequence[np.ndarray], *, mask_value: int | None = None,
                batch_size: int = 8) -> list[np.ndarray]:
        """Masks of the supports' object in every query.

        Parameters
        ----------
        query_images : sequence of H x W x 3 uint8 arrays (any sizes)
        support_images : sequence of K H x W x 3 uint8 arrays
        support_masks : sequence of K H x W arrays, object non-zero (or ``== mask_value``)

        Returns
        -------
        list of H x W bool arrays, one per query, at the query's own size
        """
        s, m = self.prepare_supports(support_images, support_masks, mask_value=mask_value)
        return self.predict_prepared(query_images, s, m, batch_size=batch_size)

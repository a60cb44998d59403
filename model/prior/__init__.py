"""Model core of the prior extractor's contrastive pretraining (MoCo v2, global + local).

Import the submodules directly (this package imports nothing heavy):

- ``model.prior.queue``: :class:`RingQueue`, the negative-key queue.
- ``model.prior.patches``: :func:`sample_patch_ids`, :func:`patch_masks`,
  :func:`pool_patches` (DetCon-style mask pooling of superpixel patches).
- ``model.prior.augment``: :class:`PairedAugment`, the MoCo-v2 view applied to the image
  and, geometrically, to its superpixel map.
- ``model.prior.device_augment``: the device half of ``--augment-on device`` (the worker
  ships :class:`~model.prior.augment.PairedCrop`'s uint8 crops and drawn parameters; flip,
  jitter, grayscale, blur and normalisation run batched on the training device).
- ``model.prior.moco``: :class:`PriorMoCo`, the two encoders, heads, queues and losses;
  :class:`SplitBatchNorm`.

See ``docs/prior.md`` for the method, equations and deviations from the paper.
"""

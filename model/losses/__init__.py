"""Contrastive losses for the prior extractor's pretraining (one loss per file).

- :func:`global_infonce` -- MoCo InfoNCE on whole-image embeddings (QGNet eq. 1).
- :func:`local_infonce` -- the same on superpixel-patch embeddings (QGNet eq. 2).
"""
from model.losses.global_infonce import global_infonce
from model.losses.local_infonce import local_infonce

__all__ = ["global_infonce", "local_infonce"]

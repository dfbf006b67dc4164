"""maskcon-mini: a small, tested implementation of MaskCon and its baselines.

MaskCon (Feng and Patras, "MaskCon: Masked Contrastive Learning for Coarse-Labelled Dataset",
CVPR 2023) learns fine-grained representations from coarse labels with MoCo-style
contrastive learning and soft targets over [positive key, queue].
"""

__version__ = "0.1.0"

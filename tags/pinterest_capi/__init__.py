"""The Pinterest Conversions API tag (`pinterest_capi`).

mapping.py  common event data → a Pinterest conversion event, personal data hashed
sender.py   batched delivery, per-event statuses, HTTP errors → retry / never, isolation
tag.py      the tag type, its checks and match quality
"""

from .sender import PinterestSender
from .tag import PinterestCapiTag

__all__ = ["PinterestCapiTag", "PinterestSender"]

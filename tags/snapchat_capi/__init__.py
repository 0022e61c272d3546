"""The Snapchat Conversions API tag (`snapchat_capi`).

mapping.py  common event data → a Snap CAPI v3 event, personal data hashed
sender.py   batched delivery, HTTP errors → retry / never, isolation
tag.py      the tag type, its checks and match quality
"""

from .sender import SnapchatSender
from .tag import SnapchatCapiTag

__all__ = ["SnapchatCapiTag", "SnapchatSender"]

"""The TikTok Events API tag (`tiktok_events`).

mapping.py  common event data → a TikTok event, personal data normalized and hashed
sender.py   batched delivery, TikTok's body codes → retry / throttle / never, isolation
tag.py      the tag type, its checks and match quality
"""

from .sender import TikTokSender
from .tag import TikTokEventsTag

__all__ = ["TikTokEventsTag", "TikTokSender"]

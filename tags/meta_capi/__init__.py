"""The Meta Conversions API tag (`meta_capi`).

normalize.py     the shared identity module (tagserver.toolkit.identity): normalization, SHA-256
mapping.py       common event data → a CAPI server event
checks.py        what Meta would refuse, decided before anything is stored
quality.py       local Event Match Quality estimate
graph_errors.py  Graph API error codes → retry / long backoff / never
sender.py        batched delivery, splitting a refused batch to isolate bad events
tag.py           the tag type itself
"""

from .sender import MetaSender
from .tag import MetaCapiTag

__all__ = ["MetaCapiTag", "MetaSender"]

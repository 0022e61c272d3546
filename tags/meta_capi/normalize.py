"""Meta's normalization rules are the shared identity module's (`tagserver.identity`): every
conversions tag normalizes and hashes the same way. This name stays for code written against
the Meta tag's own module."""

from tagserver.identity import *  # noqa: F403
from tagserver.identity import __all__ as __all__

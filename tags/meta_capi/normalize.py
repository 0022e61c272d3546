"""Meta's normalization rules are the shared identity module's (`tagserver.toolkit.identity`):
every conversions tag normalizes and hashes the same way. This name stays for the Meta tag's
own modules and for code written against it."""

from tagserver.toolkit.identity import *  # noqa: F403
from tagserver.toolkit.identity import __all__ as __all__

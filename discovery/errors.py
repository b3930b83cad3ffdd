"""The exception tree. Every message says what happened and, where it can, what to change.

* :class:`PermanentError` - retrying cannot help; the run stops and the message names the
  setting to fix. Examples: association rejected because the PACS does not know our calling
  AE title or its called AE title (PS3.8 9.3.4, reject source 1, reason 3 or 7); Study Root
  C-FIND not among the accepted presentation contexts; a TLS certificate the PACS refuses.
* :class:`TransientError` - the same request may succeed later; retried with backoff by the
  query task (the only layer that retries). Examples: connection refused or timed out while
  the PACS restarts; association rejected as transient (reject result 2, or source 3
  "local limit exceeded"); A-ABORT; a DIMSE timeout, seen as a response without a status.
"""

from __future__ import annotations


class DiscoveryError(Exception):
    """Base of every error pacs-discovery raises on purpose."""


class PermanentError(DiscoveryError):
    """Retrying will not help: a setting or the PACS configuration must change."""


class TransientError(DiscoveryError):
    """The PACS or the network failed this time; the same request may succeed later."""

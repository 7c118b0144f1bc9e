"""The one error type of the latent store: its message is a single line meant for the user."""

from __future__ import annotations


class StoreError(ValueError):
    """A latent store that is missing, incomplete, corrupt or not what the caller expected."""

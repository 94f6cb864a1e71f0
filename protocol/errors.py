"""The one exception type of the wire protocol."""


class ProtocolError(ValueError):
    """Malformed, oversized or inconsistent protocol data.

    Every decoder in :mod:`seedswarm.protocol` raises this (and only this) for bad
    input, before it changes any state, so a caller can drop a hostile or corrupt
    value with a single ``except ProtocolError``.
    """

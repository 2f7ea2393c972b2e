"""What the WebSocket sources share.

Jetstream and Mastodon sockets can stop sending without closing, so each read loop runs an
`IdleWatch` (`sfmd.sources.idle`) given the socket's `close`.
"""

from __future__ import annotations

#: A text frame larger than this is refused (these networks' frames are a few KB).
MAX_FRAME_BYTES = 64 << 20

"""Bluesky: Jetstream's v1 `/subscribe` WebSocket, with cursors that make restarts lossless."""

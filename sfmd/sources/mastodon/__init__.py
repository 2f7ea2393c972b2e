"""Mastodon: public, hashtag, list and home streams over one WebSocket per account, with
each stream's gaps filled from its REST timeline."""

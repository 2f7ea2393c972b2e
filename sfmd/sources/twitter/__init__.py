"""Twitter: the v1.1 and v2 streaming APIs, their framing, OAuth, rules and users/lookup."""

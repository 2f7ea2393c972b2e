"""What tests share besides fixtures: waits, configs, files, the daemon, its clients.

Fixtures live in the `conftest.py` files; everything a test imports comes from here, so no
test module imports another.
"""

"""The daemon: start-up, main loop and shutdown around the reconciler."""

"""The simulated APIs, for demos, tests and dry runs: never imported by `sfmd run`."""

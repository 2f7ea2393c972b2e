"""The control plane: the HTTP API on the Unix socket, its OpenAPI document, /metrics."""

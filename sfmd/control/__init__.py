"""The control plane: the HTTP API (`api`) on its Unix socket (`server`), the OpenAPI document
(`openapi`) and the Prometheus page (`metrics`)."""

"""The desired state: every stream's settings, validated, in one atomically written file."""

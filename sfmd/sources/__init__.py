"""Where messages come from: one subpackage per network, behind the same small interface."""

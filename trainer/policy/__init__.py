"""Policies: the interface and registry (``base``), the tiny built-in policy with its
codec, and the NeMo adapters (``nemo``)."""

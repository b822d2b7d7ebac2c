"""NeMo adapters: MagpieTTS as a ttspo policy, NeMo's audio codec as a ttspo codec.

Importing this package does not import NeMo; its modules import it on use (the
``nemo`` extra), so the CLI and the tiny policy start fast without it.
"""

"""Shared test settings: nothing in the suite may reach a model hub."""

import os

# NeMo and Hugging Face libraries fail fast (not after network time-outs) offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

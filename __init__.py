"""ttspo: data-centric preference alignment for codec-language-model TTS.

The repository root is this package: ``builder/``, ``trainer/`` and ``sql/`` are
``ttspo.builder``, ``ttspo.trainer`` and ``ttspo.sql`` (pyproject's package-dir
mapping). Importing ``ttspo`` stays light: the notebook API is loaded on first use.
"""

__version__ = "0.1.0"

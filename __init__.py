"""ttspo: data-centric preference alignment for codec-language-model TTS.

The repository root is this package: ``builder/``, ``trainer/`` and ``sql/`` are
``ttspo.builder``, ``ttspo.trainer`` and ``ttspo.sql`` (pyproject's package-dir
mapping). Importing ``ttspo`` stays light: the notebook API is loaded on first use
(``ttspo.Store``, see ``ttspo.builder.api``), so ``ttspo --help`` never loads
Lance, DuckDB or torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Store", "recipes"):
        from ttspo.builder import api

        return getattr(api, name)
    raise AttributeError(f"module 'ttspo' has no attribute {name!r}")


__all__ = ["Store", "recipes", "__version__"]

"""ttspo builder: everything up to a versioned preference set."""

__version__ = "0.1.0"

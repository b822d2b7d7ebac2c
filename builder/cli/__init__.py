"""The `ttspo` command line: `main` assembles one module per command family."""

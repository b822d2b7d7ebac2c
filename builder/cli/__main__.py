"""`python -m ttspo.builder.cli` is `ttspo`."""

from ttspo.builder.cli.main import main

main()

"""The `ttspo` command line: `main` owns the root group and assembles the command families of both halves."""

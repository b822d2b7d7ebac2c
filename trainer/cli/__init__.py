"""The training half's commands: `ttspo train`, `generate`, `compare`, `rewards`, `demo`."""

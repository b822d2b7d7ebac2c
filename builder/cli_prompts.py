"""`ttspo` commands: prompts family. (Placeholder until its issue lands.)"""

from __future__ import annotations

import click  # noqa: F401

from builder.cli import cli  # noqa: F401

"""`python -m ttspo.trainer` was training's torchrun entry: it now says where that went."""

import sys

sys.exit("python -m ttspo.trainer is gone: run `ttspo train dpo|grpo ...`, under torchrun "
         "`torchrun ... -m ttspo.builder.cli -- --store ST train dpo|grpo ...`")

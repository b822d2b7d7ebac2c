"""ttspo.trainer: the training half, in rooms, each importing only earlier ones.

``run`` (config, checkpoints, run folders) < ``policy`` (the interface, the tiny
policy and its codec, NeMo) < ``dpo`` (pair data, losses, the reference cache, the
loop) < ``generate`` (sampling a checkpoint into generations) < ``grpo`` (rollout,
rewards, the rollouts table, the loop) < ``api`` (the training half of
``ttspo.Store``) < ``demo`` (the whole workflow on the bundled corpus) < ``cli``
(``ttspo train``, ``generate``, ``compare``, ``rewards``, ``demo``). Runs under torchrun.
"""

"""The training half of ``ttspo.Store``: generate, precompute-ref, train dpo and grpo.

    import ttspo
    store = ttspo.Store("ttspo-store")
    store.train_dpo("prefs@v1", out="runs/a", overrides=["train.max_steps=50"])

:class:`TrainerMethods` is mixed into the data half (``ttspo.builder.api.Store``)
by the registry in ``ttspo/__init__.py``: ``ttspo.Store`` has both, and the
builder never imports this module. The methods use the data half's ``core``,
``_require`` and ``check_output``; the conventions are the data half's (options
keyword-only, lineage from the command line or the call).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ttspo.builder.core.errors import ModelError
from ttspo.builder.core.store import Lineage, make_lineage
from ttspo.builder.scoring.options import DEFAULTS as SCORE


class TrainerMethods:
    """The trainer's methods of ``ttspo.Store`` (see the module's docstring)."""

    # ------------------------------------------------------------- generate
    def generate(self, *, run: str, checkpoint: str | os.PathLike, policy: str = "tiny",
                 samples: int = 4, prompts: str = "prompts", where: str | None = None,
                 temperature: float = 1.0, top_k: int = 0, cfg_scale: float = 1.0,
                 max_steps: int = 430, seed: int = 0, use_kv_cache: bool = True,
                 audio_dir: str | os.PathLike | None = None, embed_audio: bool = False,
                 score: bool = False, metrics: str | Sequence[str] = SCORE.metrics,
                 asr: str = SCORE.asr, sv: str = SCORE.sv, batch_size: int = 8,
                 lineage: Lineage | None = None):
        """SAMPLES samples per selected prompt from CHECKPOINT into generations as RUN
        (ttspo.trainer.generate.run: seeded per prompt and sample, one commit, reruns fill
        what is missing). Under torchrun each rank takes its share. A Result."""
        from ttspo.builder.core.dist import comm_from_env
        from ttspo.builder.scoring.options import options_from
        from ttspo.builder.scoring.run import check_backends
        from ttspo.trainer.generate.run import GenerateOptions, generate
        from ttspo.trainer.policy.base import Sampling

        self._require()
        scoring = options_from(metrics, asr=asr, sv=sv) if score else None
        if scoring is not None:
            scoring.check()
            check_backends(scoring)
        sampling = Sampling(temperature=temperature, top_k=top_k, cfg_scale=cfg_scale,
                            max_steps=max_steps, use_kv_cache=use_kv_cache, seed=seed)
        options = GenerateOptions(run=run, checkpoint=str(checkpoint), policy=policy,
                                  samples=samples, prompts=prompts, where=where,
                                  sampling=sampling, embed_audio=embed_audio, score=scoring,
                                  audio_dir=None if audio_dir is None else str(audio_dir),
                                  batch_size=batch_size)
        lineage = lineage or make_lineage("generate", {"run": run, "checkpoint": str(checkpoint),
                                                       "samples": samples, "where": where})
        comm = comm_from_env()
        try:
            return generate(self.core, options, lineage=lineage, comm=comm)
        finally:
            comm.close()

    # ---------------------------------------------------------------- train
    # CONFIG (a YAML path) and OVERRIDES ("key=value") make the one training Config.
    def precompute_ref(self, set_ref: str, *, ref: str | os.PathLike, policy: str = "tiny",
                       config=None, overrides: Sequence[str] = (), batch_pairs: int = 16,
                       lineage: Lineage | None = None) -> dict[str, Any]:
        """Reference log-probs of SET_REF's pairs under checkpoint REF into ref_logps, keyed
        by (set, version, REF's sha256, the policy config's sha256: give train_dpo's
        CONFIG/OVERRIDES). A summary; its version is None when the key was there."""
        from ttspo.trainer.dpo.ref import precompute_ref

        cfg, lineage = self._train_setup("train precompute-ref", config, overrides, lineage,
                                         set_ref=set_ref, ref=str(ref), policy=policy,
                                         batch_pairs=batch_pairs)
        return precompute_ref(self.core, set_ref, ref_path=ref, cfg=cfg, spec=policy,
                              lineage=lineage, batch_pairs=batch_pairs)

    def train_dpo(self, set_ref: str, *, out: str | os.PathLike, policy: str = "tiny",
                  init=None, config=None, overrides: Sequence[str] = (),
                  lineage: Lineage | None = None, echo=print, force_lock: bool = False):
        """DPO/IPO/RPO on SET_REF into run folder OUT (ttspo.trainer.dpo.loop): a RunResult.
        FORCE_LOCK takes OUT over from a writer another host's lock file names."""
        from ttspo.trainer.dpo.loop import train_dpo

        init = None if init is None else str(init)
        cfg, lineage = self._train_setup("train dpo", config, overrides, lineage, set_ref=set_ref,
                                         out=str(out), policy=policy, init=init)
        return train_dpo(self.core, set_ref, cfg=cfg, out=out, spec=policy, init=init,
                         lineage=lineage, echo=echo, force_lock=force_lock)

    def train_grpo(self, *, out: str | os.PathLike, policy: str = "tiny", init=None,
                   config=None, overrides: Sequence[str] = (), lineage: Lineage | None = None,
                   echo=print, force_lock: bool = False):
        """Online GRPO on the prompts table (``grpo.prompts``, ``grpo.where``) into run
        folder OUT (ttspo.trainer.grpo.loop): a GrpoResult. FORCE_LOCK: as train_dpo's."""
        from ttspo.trainer.grpo.loop import train_grpo

        init = None if init is None else str(init)
        cfg, lineage = self._train_setup("train grpo", config, overrides, lineage,
                                         out=str(out), policy=policy, init=init)
        return train_grpo(self.core, cfg=cfg, out=out, spec=policy, init=init, lineage=lineage,
                          echo=echo, force_lock=force_lock)

    def _train_setup(self, command: str, config, overrides, lineage, **args):
        from ttspo.trainer.run.config import load_config
        from ttspo.trainer.run.folder import made_with_old_keys

        self._require()
        # the old loss and reward keys only resume a run folder made with them
        old_keys = args.get("out") is not None and made_with_old_keys(args["out"])
        cfg = load_config(config, list(overrides), old_keys=old_keys)
        return cfg, lineage or make_lineage(command, {
            **args, "config": None if config is None else str(config), "overrides": list(overrides)})


def load_codec(spec: str):
    """The codec SPEC names: ``nemo:PATH.nemo`` (a local NeMo AudioCodecModel)."""
    name, _, path = spec.partition(":")
    if name != "nemo" or not path:
        raise ModelError(f"--codec {spec}: give a NeMo codec as nemo:PATH.nemo")
    from ttspo.trainer.policy.nemo.codec import NemoCodec

    return NemoCodec.load(path)

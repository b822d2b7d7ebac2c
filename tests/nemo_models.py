"""Tiny NeMo models built from configs in code, saved as ``.nemo`` (no download).

Used by the NeMo tests and by ``bench/nemo_dpo.py``. The sizes follow
``shared/reference/nemo-facts.md``: a 22050 Hz FSQ codec with 8 codebooks of 256
entries (1.3 MB ``.nemo``) and a ~0.5 M-parameter ``decoder_context_tts``
MagpieTTS with a character tokenizer (no phoneme dictionaries, none ship in the
wheel). Building a model seeds torch, so the same call gives the same weights.

Import this module only where NeMo is installed: it imports NeMo on use.
"""

from __future__ import annotations

from pathlib import Path

import torch

CODEC_SR = 22050
SAMPLES_PER_FRAME = 1024
NUM_CODEBOOKS = 8
CODEBOOK_SIZE = 256  # 4*4*4*4 FSQ levels per group
ASR_VOCAB = [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["'"]
TOKENIZER = {  # an offline character tokenizer, under the name NeMo's datasets look up
    "english_phoneme": {
        "_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.EnglishCharsTokenizer",
        "punct": True, "apostrophe": True, "pad_with_space": False}}


def codec_config() -> dict:
    return {
        "sample_rate": CODEC_SR, "samples_per_frame": SAMPLES_PER_FRAME,
        "commit_loss_scale": 0.0,  # required with FSQ (the default raises)
        "loss_resolutions": [[512, 128, 512]], "mel_loss_dims": [64],
        "audio_encoder": {
            "_target_": "nemo.collections.tts.modules.audio_codec_modules.HiFiGANEncoder",
            "down_sample_rates": [2, 2, 4, 8, 8], "encoded_dim": 32, "base_channels": 4,
            "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [1]},
        "audio_decoder": {
            "_target_": "nemo.collections.tts.modules.audio_codec_modules.HiFiGANDecoder",
            "up_sample_rates": [8, 8, 4, 2, 2], "input_dim": 32, "base_channels": 64,
            "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [1]},
        "vector_quantizer": {
            "_target_": "nemo.collections.tts.modules.audio_codec_modules.GroupFiniteScalarQuantizer",
            "num_groups": NUM_CODEBOOKS, "num_levels_per_group": [4, 4, 4, 4]},
        "generator_loss": {"_target_": "nemo.collections.tts.losses.audio_codec_loss.GeneratorSquaredLoss"},
        "discriminator_loss": {
            "_target_": "nemo.collections.tts.losses.audio_codec_loss.DiscriminatorSquaredLoss"},
    }


def save_codec(path: str | Path, seed: int = 0) -> Path:
    """A tiny AudioCodecModel saved at PATH (.nemo)."""
    from omegaconf import OmegaConf
    from nemo.collections.tts.models import AudioCodecModel

    torch.manual_seed(seed)
    model = AudioCodecModel(cfg=OmegaConf.create(codec_config()))
    model.save_to(str(path))
    return Path(path)


def _transformer(n_layers: int, **extra) -> dict:
    return {"n_layers": n_layers, "d_model": 64, "d_ffn": 128, "sa_n_heads": 2, "kernel_size": 1,
            "p_dropout": 0.0, "is_causal": True, "apply_norm_out": True,
            "max_length_causal_mask": 512, "use_learnable_pos_emb": True, **extra}


def magpie_config(codec_path: str | Path, *, dropout: float = 0.0,
                  local_transformer: bool = False, **extra) -> dict:
    """A tiny MagpieTTS config (decoder_context_tts, text and audio contexts)."""
    cfg = {
        "model_type": "decoder_context_tts", "codecmodel_path": str(codec_path),
        "embedding_dim": 64, "text_tokenizers": TOKENIZER,
        "use_text_conditioning_encoder": True,
        "encoder": _transformer(1, has_xattn=False, p_dropout=dropout),
        "decoder": _transformer(2, has_xattn=True, xa_d_memory=64, xa_n_heads=1,
                                apply_norm_to_cond=True, p_dropout=dropout),
        "prior_end_step": 0, "prior_scaledown_start_step": 0, "prior_scaling_factor": 0.05,
        "load_cached_codes_if_available": True,
        "context_duration_min": 5.0, "context_duration_max": 5.0,
        "sample_rate": CODEC_SR,
    }
    if local_transformer:
        cfg.update({"local_transformer_type": "autoregressive", "local_transformer_n_layers": 1,
                    "local_transformer_n_heads": 1, "local_transformer_hidden_dim": 32})
    cfg.update(extra)
    return cfg


def build_magpie(codec_path: str | Path, *, seed: int = 0, cls=None, **options):
    """A tiny MagpieTTSModel (or CLS, e.g. MagpieTTSModelOfflinePO) in eval mode."""
    from omegaconf import OmegaConf

    if cls is None:
        from nemo.collections.tts.models import MagpieTTSModel as cls
    torch.manual_seed(seed)
    return cls(cfg=OmegaConf.create(magpie_config(codec_path, **options))).eval()


def save_magpie(codec_path: str | Path, path: str | Path, *, seed: int = 0, **options) -> Path:
    """A tiny MagpieTTSModel saved at PATH (.nemo); it names CODEC_PATH, not a copy."""
    build_magpie(codec_path, seed=seed, **options).save_to(str(path))
    return Path(path)


# ------------------------------------------------------------- scorers
def _conv_encoder(filters: int) -> dict:
    return {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 64,
            "activation": "relu", "conv_mask": True,
            "jasper": [{"filters": filters, "repeat": 1, "kernel": [1], "stride": [1],
                        "dilation": [1], "dropout": 0.0, "residual": False, "separable": False}]}


PREPROCESSOR = {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor"}


def save_ctc_asr(path: str | Path, seed: int = 0) -> Path:
    """An untrained character CTC model (EncDecCTCModel) saved at PATH."""
    from omegaconf import DictConfig
    from nemo.collections.asr.models import EncDecCTCModel

    torch.manual_seed(seed)
    cfg = DictConfig({
        "preprocessor": PREPROCESSOR, "encoder": _conv_encoder(32),
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 32,
                    "num_classes": len(ASR_VOCAB), "vocabulary": ASR_VOCAB}})
    EncDecCTCModel(cfg=cfg).save_to(str(path))
    return Path(path)


def save_rnnt_asr(path: str | Path, seed: int = 0) -> Path:
    """An untrained character RNNT model (EncDecRNNTModel, greedy batch decoding) saved at PATH."""
    from omegaconf import DictConfig
    from nemo.collections.asr.models import EncDecRNNTModel

    torch.manual_seed(seed)
    n = len(ASR_VOCAB)
    cfg = DictConfig({
        "labels": ASR_VOCAB, "preprocessor": PREPROCESSOR, "encoder": _conv_encoder(32),
        "model_defaults": {"enc_hidden": 32, "pred_hidden": 16},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "vocab_size": n,
                    "prednet": {"pred_hidden": 16, "pred_rnn_layers": 1}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "num_classes": n,
                  "jointnet": {"encoder_hidden": 32, "pred_hidden": 16, "joint_hidden": 16,
                               "activation": "relu"}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 1}},
        "loss": {"loss_name": "default"},
    })
    EncDecRNNTModel(cfg=cfg).save_to(str(path))
    return Path(path)


def save_speaker(path: str | Path, seed: int = 0) -> Path:
    """An untrained TitaNet-shaped speaker model (EncDecSpeakerLabelModel) saved at PATH."""
    from omegaconf import DictConfig
    from nemo.collections.asr.models import EncDecSpeakerLabelModel

    torch.manual_seed(seed)
    cfg = DictConfig({
        "preprocessor": PREPROCESSOR, "encoder": _conv_encoder(32),
        "decoder": {"_target_": "nemo.collections.asr.modules.SpeakerDecoder", "feat_in": 32,
                    "num_classes": 2, "pool_mode": "xvector", "emb_sizes": [16]}})
    EncDecSpeakerLabelModel(cfg=cfg).save_to(str(path))
    return Path(path)

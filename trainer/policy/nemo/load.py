"""Loading NeMo's MagpieTTS as a ttspo policy: ``--policy nemo:PATH[,codec=C][,config=Y]``.

The registry (``ttspo.trainer.policy.base.POLICIES``) calls :func:`load_nemo`. A model comes
from a ``.nemo`` file, or a Lightning ``.ckpt`` plus its YAML config, with a local
codec (the config's ``codecmodel_path``, or ``codec=``); nothing is downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ttspo.builder.core.errors import ModelError, first_line
from ttspo.trainer.policy.nemo.policy import ARCHITECTURE, NemoMagpiePolicy
from ttspo.trainer.run.verify import refused_reason


def set_dropout(model, p: float, cfg_dropout: float) -> None:
    """Every nn.Dropout to P; NeMo's context (CFG) and decoder-input dropout to CFG_DROPOUT."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    model.cfg_unconditional_prob = cfg_dropout
    model.decoder_input_dropout_prob = cfg_dropout
    if p > 0 or cfg_dropout > 0:
        warnings.warn(f"NeMo policy dropout is on (dropout {p}, context dropout {cfg_dropout}): "
                      "the reference runs in eval mode, so a policy equal to it will not give "
                      "DPO loss log 2", stacklevel=3)


def _model_config(path: Path, codec: str | None, config_yaml: str | None):
    from omegaconf import OmegaConf, open_dict

    if path.suffix == ".nemo":
        from nemo.collections.tts.models import MagpieTTSModel

        cfg = MagpieTTSModel.restore_from(str(path), return_config=True)
    else:
        if not config_yaml:
            raise ModelError(f"policy nemo:{path}: a Lightning checkpoint needs its config "
                             "(nemo:CKPT,config=CONFIG.yaml)")
        cfg = OmegaConf.load(config_yaml)
        cfg = cfg.model if "model" in cfg else cfg
    with open_dict(cfg):
        if codec:
            cfg.codecmodel_path = str(codec)
        cfg.train_ds = None
        cfg.validation_ds = None
    where = str(cfg.get("codecmodel_path"))
    if not Path(where).is_file():
        raise ModelError(f"policy nemo:{path}: its codec {where} is not a local file "
                         "(give one: nemo:MODEL,codec=CODEC.nemo; nothing is downloaded)")
    return cfg


def restore_magpie(path: str | Path, *, codec: str | None = None, config_yaml: str | None = None):
    """A MagpieTTSModel from a .nemo, or a Lightning .ckpt plus its config, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"policy nemo:{path}: file not found")
    from nemo.collections.tts.models import MagpieTTSModel

    cfg = _model_config(path, codec, config_yaml)
    try:
        if path.suffix == ".nemo":
            model = MagpieTTSModel.restore_from(str(path), override_config_path=cfg, map_location="cpu")
        else:
            state = read_lightning(path)  # before the model is built: a refusal costs nothing
            model = MagpieTTSModel(cfg=cfg)
            model.load_state_dict(state, strict=False)
    except ModelError:
        raise
    except Exception as exc:  # NeMo raises many types for a bad archive
        raise ModelError(f"policy nemo:{path}: cannot restore a MagpieTTSModel ({exc})") from None
    return model


def lightning_globals() -> list[Any]:
    """What a Lightning checkpoint needs beyond tensors, numbers and strings: its
    ``hyper_parameters`` hold omegaconf configs (their nodes, metadata and the types
    metadata names). Each only stores values; none runs code a file names."""
    import typing
    from collections import defaultdict

    from omegaconf import DictConfig, ListConfig, base, nodes

    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, nodes.AnyNode,
            nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
            (typing.Any, "typing.Any"), dict, list, int, float, str, bool, defaultdict]


def read_lightning(path: Path) -> dict[str, Any]:
    """The state dict of a Lightning checkpoint, loaded weights-only (omegaconf's types
    allowed, nothing else): a pickle payload in it is refused, never run."""
    try:
        with torch.serialization.safe_globals(lightning_globals()):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any unreadable file: one line, no code run
        raise ModelError(f"policy nemo:{path}: not a Lightning checkpoint ttspo reads, "
                         f"refused ({refused_reason(exc)})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"policy nemo:{path}: holds no state_dict of tensors")
    return state


def load_weights(model, path: str | os.PathLike) -> None:
    """Weights from a checkpoint ``NemoMagpiePolicy.save`` wrote."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any unreadable file is "not a checkpoint"
        raise ModelError(f"{path}: not a ttspo policy checkpoint ({refused_reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("architecture") != ARCHITECTURE:
        raise ModelError(f"{path}: not a checkpoint of policy '{ARCHITECTURE}'")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the model ({first_line(exc, 120)})") from None


def parse_arg(arg: str) -> tuple[str, dict[str, str]]:
    """``PATH[,codec=C][,config=Y]`` -> (PATH, options)."""
    path, *rest = arg.split(",")
    options = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in ("codec", "config"):
            raise ModelError(f"policy nemo:{arg}: unknown option '{item}' (codec=PATH, config=PATH)")
        options[key] = value
    if not path:
        raise ModelError("policy nemo: give the model as nemo:PATH.nemo (or nemo:CKPT,config=YAML)")
    return path, options


def load_nemo(arg: str, *, init: str | None = None, config: dict[str, Any] | None = None
              ) -> NemoMagpiePolicy:
    """The registry's loader for ``--policy nemo:PATH[,codec=C][,config=Y]``.

    INIT is a checkpoint ``save`` wrote (or another ``.nemo``, restored instead of
    PATH). CONFIG may give ``codec``, ``config`` (as the options), ``dropout`` and
    ``cfg_dropout`` (default 0: see the module doc) and ``local_transformer_logits``.
    """
    config = dict(config or {})
    path, options = parse_arg(arg)
    options = {**{k: config.pop(k) for k in ("codec", "config") if k in config}, **options}
    dropout, cfg_dropout = float(config.pop("dropout", 0.0)), float(config.pop("cfg_dropout", 0.0))
    lt_logits = bool(config.pop("local_transformer_logits", False))
    if config:
        raise ModelError(f"policy nemo: unknown settings {sorted(config)}")
    if init and Path(init).suffix == ".nemo":  # a .nemo checkpoint: its weights, PATH's place
        path, init = init, None
    model = restore_magpie(path, codec=options.get("codec"), config_yaml=options.get("config"))
    if init:
        load_weights(model, init)
    set_dropout(model, dropout, cfg_dropout)
    return NemoMagpiePolicy(model, source=str(Path(path).resolve()), local_transformer_logits=lt_logits)

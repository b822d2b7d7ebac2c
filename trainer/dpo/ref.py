"""Reference log-probs: computed once per (set version, reference checkpoint, policy
config), kept in the store.

``ttspo train precompute-ref SET[@V] --policy tiny --ref CKPT [--config F] [-o k=v]``
runs the reference policy over every pair of the set version (train and val) under
no_grad, in eval mode, and writes one row per pair to the ``ref_logps`` table: the
chosen and rejected log-prob sums PER CODEBOOK (so per-codebook loss weights need no
recompute), keyed by (set, set version, sha256 of the checkpoint file, sha256 of the
policy's identity config). The config is part of the key because it can change the
logits without changing the weights file (a NeMo model's ``policy.model`` config or
local-transformer logits; a tiny policy loaded with other settings): precompute-ref
takes the same Config as ``train dpo``, so both load the same policy.

``train dpo`` looks the key up (:func:`lookup`): only an exact match with a row
for every pair counts. Then the run holds no reference model and runs one
policy forward per step; otherwise it keeps a live reference (or stops, with
``train.require_ref_cache``). Rows are never reused for another set version,
another checkpoint or another policy config: the key says so. Rows written before
the config was part of the key have none (null; a table that old gains the column
on the next precompute) and never match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ttspo.builder.core.files import file_sha256
from ttspo.builder.core.lance_rows import SortedIds
from ttspo.builder.core.schemas import REF, REF_LOGPS_SCHEMA
from ttspo.builder.core.store import Lineage, Store, as_lineage, sql_string
from ttspo.trainer.dpo.codes_reader import PairCodes
from ttspo.trainer.dpo.data import PairIds, Pairs
from ttspo.trainer.dpo.forward import concatenated_forward

TABLE = "ref_logps"


@dataclass(kw_only=True)
class RefCache:
    """Cached reference log-probs of one key, found by pair id: the rows' pair ids
    sorted (:class:`SortedIds`, about 12 bytes a pair plus the id's characters, where a
    dict of them took ~100), a binary search per pair of a micro-batch."""

    sha256: str
    chosen: np.ndarray  # [N, C] float32
    rejected: np.ndarray
    index: SortedIds  # pair id -> row (a repeated id: its last row, as a dict kept it)
    version: int = 0  # the ref_logps version read (the run's lineage records it)

    def lookup(self, pair_ids: Any, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.index.find(pair_array(pair_ids, idx))
        if (rows < 0).any():
            raise KeyError(pair_ids[int(np.asarray(idx)[np.flatnonzero(rows < 0)[0]])])
        return torch.from_numpy(self.chosen[rows]), torch.from_numpy(self.rejected[rows])


def pair_array(pair_ids: Any, idx: Any = None) -> pa.Array:
    """The pair ids PAIR_IDS[IDX] (all without IDX) as an Arrow string array: from a
    :class:`PairIds` without a Python string per pair."""
    if isinstance(pair_ids, PairIds):
        return pa.array(pair_ids if idx is None else pair_ids[np.asarray(idx, dtype=np.int64)])
    return pa.array(list(pair_ids) if idx is None else [pair_ids[i] for i in idx], pa.string())


def policy_key(policy: Any, eos_target: str = "always") -> str:
    """The cache key's policy part: the sha256 of the policy's identity config; with
    ``data.eos_target`` sampled (other targets, other log-probs) a hash of both, so
    neither target's rows are read for the other (NeMo's default keeps the plain key)."""
    config_sha = policy.identity(with_sha256=False).config_sha256
    if eos_target == "always":
        return config_sha
    return hashlib.sha256(f"{config_sha} data.eos_target={eos_target}".encode()).hexdigest()


def _key_filter(set_name: str, set_version: int, sha256: str, policy_sha256: str) -> str:
    return (f"{REF.set_name} = {sql_string(set_name)} AND {REF.set_version} = {int(set_version)} "
            f"AND {REF.ref_sha256} = {sql_string(sha256)} "
            f"AND {REF.policy_sha256} = {sql_string(policy_sha256)}")


def lookup(store: Store, pairs: Pairs, sha256: str, policy_sha256: str) -> RefCache | None:
    """The cache for exactly (pairs' set, its version, SHA256, POLICY_SHA256), covering
    every pair; else None (always for a table made before the policy config was keyed)."""
    if not store.exists(TABLE):
        return None
    ds = store.open(TABLE)
    if REF.policy_sha256 not in ds.schema.names:
        return None
    table = ds.to_table(
        columns=[REF.pair_id, REF.chosen_logps, REF.rejected_logps],
        filter=_key_filter(pairs.set_name, pairs.set_version, sha256, policy_sha256))
    index = SortedIds(table.column(REF.pair_id), np.arange(table.num_rows), first=False)
    if (index.find(pair_array(pairs.pair_ids)) < 0).any():
        return None
    stack = lambda col: per_codebook(table.column(col))
    return RefCache(sha256=sha256, chosen=stack(REF.chosen_logps),
                    rejected=stack(REF.rejected_logps), index=index, version=ds.version)


def per_codebook(column: pa.ChunkedArray) -> np.ndarray:
    """A list<float32> column of equal-length rows as float32 [N, C], from its flat
    values (a Python list per row took 1.3 s at 200k pairs, this 0.08 s)."""
    flat = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    lengths = pc.list_value_length(flat)
    if not len(flat) or flat.null_count or pc.min(lengths).as_py() != pc.max(lengths).as_py():
        return np.asarray(flat.to_pylist(), dtype=np.float32)  # as before (numpy's error)
    return flat.flatten().to_numpy().astype(np.float32).reshape(len(flat), -1)


@torch.no_grad()
def reference_logps(model: Any, pairs: Pairs, idx, codes: PairCodes | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs of the pairs IDX under the reference MODEL: no
    gradient, and fp32 even under bf16 autocast (the cache is fp32, and cached and
    live references must give the same losses)."""
    device = next(model.parameters()).device.type
    with torch.no_grad(), torch.autocast(device, enabled=False):
        out = concatenated_forward(model, model, pairs, idx, codes=codes)
        return out.chosen, out.rejected


def compute(policy: Any, pairs: Pairs, *, batch_pairs: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] chosen and rejected log-probs of every pair under POLICY (eval mode, fp32:
    a bf16 run's live reference runs in fp32 too, so cached and live agree)."""
    was_training = policy.training
    policy.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(pairs), batch_pairs):
            idx = range(start, min(start + batch_pairs, len(pairs)))
            c, r = reference_logps(policy, pairs, idx)
            chosen.append(c.float().cpu().numpy())
            rejected.append(r.float().cpu().numpy())
    finally:
        policy.train(was_training)
    return np.concatenate(chosen), np.concatenate(rejected)


def precompute(store: Store, pairs: Pairs, policy: Any, ref_path: str | Path, *,
               lineage: Lineage | dict[str, Any], batch_pairs: int = 16,
               ref_sha256: str | None = None, eos_target: str = "always") -> dict[str, Any]:
    """Write the reference log-probs of PAIRS under POLICY (loaded from REF_PATH).

    One commit of rows; nothing when the key is already complete in the table (a
    table made before the policy config was keyed first gains that column: one more
    commit, once). Returns a summary: key, pairs, version written (None when already
    there). EOS_TARGET: the ``data.eos_target`` PAIRS were loaded with (it is keyed).
    """
    sha = ref_sha256 or file_sha256(ref_path)  # REF_SHA256: the caller hashed it already
    identity = policy.identity(with_sha256=False)
    policy_sha = policy_key(policy, eos_target)
    summary = {"set": pairs.ref, "ref_sha256": sha, "policy_sha256": policy_sha,
               "pairs": len(pairs), "version": None}
    if lookup(store, pairs, sha, policy_sha) is not None:
        return summary
    chosen, rejected = compute(policy, pairs, batch_pairs=batch_pairs)
    n = len(pairs)
    table = pa.table({
        REF.set_name: [pairs.set_name] * n, REF.set_version: [pairs.set_version] * n,
        REF.ref_sha256: [sha] * n, REF.ref_architecture: [identity.architecture] * n,
        REF.pair_id: pairs.pair_ids, REF.split: pairs.split,
        REF.chosen_logps: list(chosen), REF.rejected_logps: list(rejected),
        REF.policy_sha256: [policy_sha] * n,
    }, schema=REF_LOGPS_SCHEMA)
    lineage = as_lineage(lineage).with_inputs(pairs.lineage_inputs()).with_extra(
        ref_sha256=sha, ref_path=str(Path(ref_path).absolute()), policy_sha256=policy_sha,
        policy_config=identity.config)
    with store.lock(f"{TABLE} {pairs.ref} {sha} {policy_sha}"):  # one of two precomputes writes
        if lookup(store, pairs, sha, policy_sha) is None:
            upgrade_table(store, lineage)
            summary["version"] = store.write(TABLE, table, REF_LOGPS_SCHEMA, lineage)
    return summary


def upgrade_table(store: Store, lineage: Lineage) -> None:
    """Give a ref_logps table made before the policy config was keyed that column
    (null in the old rows: they never match). One commit, by one precompute."""
    with store.lock(f"{TABLE} schema"):  # two precomputes of other keys: one upgrades
        if store.exists(TABLE) and REF.policy_sha256 not in store.open(TABLE).schema.names:
            store.add_null_columns(TABLE, REF_LOGPS_SCHEMA, lineage.with_extra(
                schema_change=f"add column {REF.policy_sha256} (older rows: null, never used)"))


def precompute_ref(store: Store, set_ref: str, *, ref_path: str | Path, cfg: Any = None,
                   spec: str = "tiny", lineage: Lineage | dict[str, Any],
                   batch_pairs: int = 16) -> dict[str, Any]:
    """``ttspo train precompute-ref``: load SPEC's policy from REF_PATH under CFG's
    ``policy.model`` (the Config ``train dpo`` takes, so the key is the one training
    looks up) and :func:`precompute` set SET_REF's pairs."""
    from ttspo.trainer.dpo.data import load_pairs
    from ttspo.trainer.policy.base import load_policy

    from ttspo.trainer.run.verify import checked_sha256

    sha = checked_sha256(ref_path, store)  # a run's checkpoint: checked against its records
    model = cfg.policy.model if cfg is not None else None
    policy = load_policy(spec, init=str(ref_path), config=model or None)
    stream = cfg is not None and cfg.data.loader == "stream"
    eos_target = cfg.data.eos_target if cfg is not None else "always"
    pairs = load_pairs(store, set_ref, encode=policy.codec.encode, stream=stream,
                       eos_target=eos_target)
    return precompute(store, pairs, policy, ref_path, lineage=lineage, batch_pairs=batch_pairs,
                      ref_sha256=sha, eos_target=eos_target)

"""Writing metric columns back without touching audio or codes.

For each fragment holding scored rows, :meth:`LanceFragment.update_columns`
writes ONE new data file with only the replaced columns (the metrics, their
sources, the transcripts) and marks those fields as dropped in the fragment's
old data file; the old file, with the audio blob and the codec codes, stays as
it is and where it is. Nothing is committed there: the fragment metadata goes to
rank 0, which commits every fragment's change in ONE ``Update`` operation
("rewrite_columns", with the matched row offsets so Lance's row-level version
metadata, and so ``ttspo diff``, see exactly the scored rows as updated).

If any rank dies before that commit, the table stays at its previous version;
the data files already written are unreferenced and go with Lance's cleanup.
"""

from __future__ import annotations

from dataclasses import dataclass

import lance
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.errors import StoreError, first_line
from ttspo.builder.scoring.plan import FRAGMENT, ROWID, write_schema
from ttspo.builder.core.store import Store


@dataclass
class FragmentUpdate:
    """One fragment's uncommitted column rewrite (picklable, sent to rank 0)."""

    fragment_id: int
    metadata: object  # lance.fragment.FragmentMetadata
    fields: list[int]
    offsets: bytes


def owned_fragments(fragment_ids: list[int], rank: int, world: int) -> list[int]:
    """Fragments RANK writes: each fragment has exactly one writer."""
    return [f for i, f in enumerate(sorted(fragment_ids)) if i % world == rank]


def write_fragment_updates(dataset: lance.LanceDataset, results: pa.Table, columns: list[str],
                           fragment_ids: list[int]) -> list[FragmentUpdate]:
    """Write the new column files of FRAGMENT_IDS (uncommitted)."""
    schema = write_schema(columns)
    updates = []
    for fid in fragment_ids:
        rows = results.filter(pc.equal(results[FRAGMENT], pa.scalar(fid, pa.uint64())))
        if rows.num_rows == 0:
            continue
        data = rows.select([ROWID] + columns).cast(schema)
        meta, fields, offsets = dataset.get_fragment(fid).update_columns(
            data, left_on=ROWID, with_offsets=True)
        updates.append(FragmentUpdate(fid, meta, list(fields), offsets))
    return updates


def commit_updates(store: Store, updates: list[FragmentUpdate], read_version: int,
                   lineage) -> int:
    """Commit every fragment's rewrite as ONE new version carrying lineage."""
    fields = sorted({f for u in updates for f in u.fields})
    op = lance.LanceOperation.Update(
        updated_fragments=[u.metadata for u in updates],
        fields_modified=fields,
        update_mode="rewrite_columns",
        updated_fragment_offsets={u.fragment_id: u.offsets for u in updates},
    )
    try:
        return store.commit("generations", op, read_version, lineage)
    except (OSError, ValueError, RuntimeError) as exc:
        raise StoreError(f"generations changed while scoring (read version {read_version}); "
                         f"run ttspo score again ({first_line(exc)})") from None

"""A stored row's audio, with HTTP range requests (what <audio> asks for to seek).

The request names a table and a row id, never a path: the path (or the blob) is
the one that row holds, so the page can serve only audio the store points at. A
wav file goes out through Starlette's FileResponse (206 + Content-Range for a
Range header, multi-range too); a Lance blob (``ingest --store-audio``) is read
lazily through Lance's blob file, one range at a time, by :func:`blob_response`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from starlette.responses import FileResponse, Response

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, ROLL
from ttspo.builder.core.store import Store, sql_string

ID_COLUMN = {"generations": GEN.generation_id, "rollouts": ROLL.rollout_id}
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
WAV = "audio/wav"


class NotFound(InputError):
    """No such row, or a row without audio: 404."""


def audio_response(store: Store, table: str, row_id: str, range_header: str | None) -> Response:
    """The audio of row ROW_ID of TABLE (generations or rollouts): its blob when it
    has one, else its audio_filepath."""
    if table not in ID_COLUMN:
        raise InputError(f"audio: table {table!r} is not generations or rollouts")
    if not store.exists(table):
        raise NotFound(f"audio: no {table} table")
    ds = store.open(table)
    found = ds.to_table(columns=[GEN.audio_filepath, GEN.audio], with_row_id=True,
                        filter=f"{ID_COLUMN[table]} = {sql_string(row_id)}")
    if found.num_rows == 0:
        raise NotFound(f"audio: no row {row_id!r} in {table}")
    if _blob_size(found.column(GEN.audio))[0] > 0:
        blob = ds.take_blobs(GEN.audio, ids=[found.column("_rowid")[0].as_py()])[0]
        return blob_response(blob, range_header)
    path = found.column(GEN.audio_filepath)[0].as_py()
    if not path or not Path(path).is_file():
        raise NotFound(f"audio: {table} row {row_id!r} has no audio file"
                       + (f" ({path} is missing)" if path else ""))
    return FileResponse(path, media_type=WAV)


def _blob_size(column: pa.ChunkedArray) -> list[int]:
    """Bytes of each row's blob (0 when it has none), from Lance's blob descriptions."""
    sizes = pc.struct_field(column, "size") if pa.types.is_struct(column.type) \
        else pc.binary_length(column)
    return pc.fill_null(sizes, 0).to_pylist()


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a one-range ``Range: bytes=...`` header; None for no
    header or one this server answers whole (several ranges: RFC 9110 lets a server
    ignore Range). ValueError for a range past the end (416)."""
    if not header:
        return None
    m = RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # bytes=-N: the last N bytes
        n = int(last)
        if n == 0:
            raise ValueError("an empty suffix range")
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(f"range {header} outside {size} bytes")
    return start, end


def blob_response(blob, range_header: str | None) -> Response:
    """A Lance blob file as a response: the whole blob (200) or one range (206)."""
    size = blob.size()
    headers = {"accept-ranges": "bytes"}
    try:
        wanted = byte_range(range_header, size)
    except ValueError:
        return Response(status_code=416, headers={**headers, "content-range": f"bytes */{size}"})
    if wanted is None:
        blob.seek(0)
        return Response(blob.read(size), media_type=WAV, headers=headers)
    first, last = wanted
    blob.seek(first)
    headers["content-range"] = f"bytes {first}-{last}/{size}"
    return Response(blob.read(last - first + 1), status_code=206, media_type=WAV,
                    headers=headers)

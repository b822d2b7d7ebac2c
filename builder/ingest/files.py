"""Fast, safe readers for the files NeMo writes when it generates audio (step 2).

NeMo writes, per generated item, ``predicted_audioRank{r}_{i}.wav``,
``..._codes.pt`` (``torch.save`` of an int16 ``[codebooks, frames]`` tensor) and
``..._metrics.json``. Reading 100k of them with ``torch.load`` costs ~0.2 ms
each, so these readers avoid torch entirely:

- codes: see :mod:`ttspo.builder.ingest.codes` (a torch.save reader without torch).
- wav: the RIFF header is parsed directly (one read), soundfile for other formats.
- metrics: UTF-8 and JSON checked strictly; NaN/inf and non-numbers rejected.

Every reader raises :class:`BadFile` with a reason worded for the user.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass

from ttspo.builder.core.files import special_kind

NEMO_FILE = re.compile(r"^predicted_audioRank(\d+)_(\d+)(\.wav|_codes\.pt|_metrics\.json)$")
SUFFIXES = (".wav", "_codes.pt", "_metrics.json")
KINDS = {suffix: kind for kind, suffix in enumerate(SUFFIXES)}  # column in the layout table
INVALID_TRANSCRIPT = "<INVALID>"
MAX_METRICS_BYTES = 16 << 20  # a metrics.json is a few hundred bytes
MAX_CODES_BYTES = 64 << 20  # a codes file is tens of KB (see codes.MAX_CODES)


class BadFile(Exception):
    """A file that cannot be ingested; str(exc) is the reason."""


def nemo_name(rank: int, index: int, kind: int) -> str:
    return f"predicted_audioRank{rank}_{index}{SUFFIXES[kind]}"


def open_for_reading(path: str) -> int:
    """An OS file descriptor on a regular file; BadFile('missing' / 'unreadable (...)' /
    'not a regular file (...)') otherwise. Opened non-blocking, so a FIFO without a
    writer cannot hang the ingest; a device (a link to /dev/zero) is refused, never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadFile("missing") from None
    except OSError as exc:
        raise BadFile(f"unreadable ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadFile("is a directory" if stat.S_ISDIR(mode) else f"not a regular file ({special_kind(mode)})")
    return fd


def read_file_bytes(path: str, limit: int | None = None) -> bytes:
    """The whole file (at most LIMIT bytes, else BadFile); os-level calls because this
    runs 300k times per 100k items."""
    fd = open_for_reading(path)
    try:
        if limit is not None and os.fstat(fd).st_size > limit:
            raise BadFile(f"too large ({os.fstat(fd).st_size} bytes, at most {limit})")
        chunks = []
        while True:  # a short read is the end of a regular file
            chunk = os.read(fd, 1 << 16)
            chunks.append(chunk)
            if len(chunk) < 1 << 16:
                break
    except OSError as exc:
        raise BadFile(f"unreadable ({exc.strerror})") from None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# -------------------------------------------------------------------- wav
@dataclass
class WavInfo:
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


MAX_SAMPLE_RATE = 2**31 - 1  # the sample_rate column is int32
MAX_CHUNKS = 4096  # RIFF chunks walked before 'data' (metadata chunks are few and large)


def wav_info_bytes(head: bytes, file_size: int) -> WavInfo | None:
    """Parse a RIFF/WAVE header held in HEAD (the first bytes of a file of FILE_SIZE);
    None when the file is some other format, "need-more" when 'data' starts past
    HEAD (then _walk_chunks over the file)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None

    def read_at(at: int, n: int) -> bytes:
        if at + n > len(head) and len(head) < file_size:
            raise _NeedMore
        return head[at:at + n]

    try:
        return _walk_chunks(read_at, file_size)
    except _NeedMore:
        return "need-more"  # type: ignore[return-value]


class _NeedMore(Exception):
    """A chunk header or fmt body lies past the bytes at hand."""


PLAIN_TAGS = (1, 3, 6, 7, 0xFFFE)  # PCM, float, A-law, mu-law, extensible: frames = bytes / align


class _NotPlain(Exception):
    """A compressed wav (ADPCM...): its length is libsndfile's to tell."""


def _fmt(body: bytes) -> tuple[int, int, int]:
    tag, channels, rate, _bps, align, bits = struct.unpack_from("<HHIIHH", body)
    if tag not in PLAIN_TAGS:
        raise _NotPlain
    if bits == 0:
        raise BadFile("wav header has 0 bits per sample")
    if channels and align != channels * ((bits + 7) // 8):
        raise BadFile(f"wav header's frame size {align} does not fit {channels} channel(s) "
                      f"of {bits} bits")
    return channels, rate, align


def _data_info(fmt: tuple | None, size: int, available: int) -> WavInfo:
    if fmt is None:
        raise BadFile("wav has no fmt chunk before its data")
    channels, rate, align = fmt
    if rate <= 0 or align <= 0 or channels <= 0:
        raise BadFile("wav header has a zero sample rate or frame size")
    if rate > MAX_SAMPLE_RATE:
        raise BadFile(f"wav sample rate {rate} is out of range")
    if size in (0, 0xFFFFFFFF):  # written by a streaming writer
        size = available
    if size > available:
        raise BadFile(f"truncated wav (header says {size} audio bytes, file has {available})")
    return WavInfo(rate, size // align, channels)


def _walk_chunks(read_at, file_size: int) -> WavInfo:
    """Chunk by chunk from the start, reading only the headers: metadata chunks of
    any length (LIST, JUNK, bext...) may precede 'fmt ' and 'data'."""
    pos, fmt = 12, None
    for _ in range(MAX_CHUNKS):
        header = read_at(pos, 8)
        if len(header) < 8:
            break
        cid, size = header[:4], struct.unpack_from("<I", header, 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            raw = read_at(body, 16)
            if len(raw) < 16:
                raise BadFile("truncated wav header")
            fmt = _fmt(raw)
        elif cid == b"data":
            return _data_info(fmt, size, file_size - body)
        pos = body + size + (size & 1)
    else:
        raise BadFile(f"wav has more than {MAX_CHUNKS} chunks before its data")
    raise BadFile("wav has no data chunk")


def wav_info(path: str, data: bytes | None = None) -> WavInfo:
    """Sample rate and length of a wav; `data` when the whole file is at hand."""
    try:
        return _wav_info(path, data)
    except _NotPlain:
        return _soundfile_info(path)


def _wav_info(path: str, data: bytes | None) -> WavInfo:
    if data is not None:
        info = wav_info_bytes(data, len(data))
        if info == "need-more":
            info = _walk_chunks(lambda at, n: data[at:at + n], len(data))
    else:
        fd = open_for_reading(path)
        try:
            size = os.fstat(fd).st_size
            info = wav_info_bytes(os.read(fd, 512), size)
            if info == "need-more":  # big chunks before 'data': walk their headers
                info = _walk_chunks(lambda at, n: os.pread(fd, n, at), size)
        except OSError as exc:
            raise BadFile(f"unreadable ({exc.strerror})") from None
        finally:
            os.close(fd)
    return info if info is not None else _soundfile_info(path)


def _soundfile_info(path: str) -> WavInfo:
    import soundfile as sf  # other containers (RF64, W64, FLAC...): let libsndfile read them

    try:
        info = sf.info(path)
    except Exception:
        raise BadFile("not a readable audio file") from None
    return WavInfo(int(info.samplerate), int(info.frames), int(info.channels))


# ---------------------------------------------------------------- metrics
# NeMo's metrics.json keys, in the order parse_metrics returns their values:
# cer, wer, ssim, pesq, codes_len (numbers), then the two transcripts
_NUMBER_KEYS = ("cer_gt", "wer_gt", "spk_similarity", "pesq", "codes_len")
_TEXT_KEYS = ("pred_transcript", "gt_transcript")


def decode_utf8(data: bytes, what: str = "text") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFile(f"{what} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def parse_json_object(text: str) -> dict:
    """json.loads with reasons a user can act on (truncated vs malformed)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise BadFile("empty file") from None
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            end = len(text.rstrip())
            line, column = text.count("\n", 0, end) + 1, end - text.rfind("\n", 0, end)
            raise BadFile(f"truncated JSON (ends at line {line} column {column})") from None
        raise BadFile(f"malformed JSON (line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise BadFile("malformed JSON (nested too deeply)") from None
    except ValueError:  # an integer of more than 4300 digits
        raise BadFile("malformed JSON (a number with too many digits)") from None
    if not isinstance(obj, dict):
        raise BadFile(f"JSON is a {type(obj).__name__}, expected an object")
    return obj


INT32 = (-2**31, 2**31 - 1)  # codes_len and sample are int32 columns


def number(obj: dict, key: str, integer: bool = False) -> float | int | None:
    """A finite number in its column's range, or None when absent/null; BadFile otherwise."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadFile(f"{key} is not a number ({json.dumps(value)[:40]})")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadFile(f"{key} is {'NaN' if math.isnan(value) else value}")
    if integer:
        if value != int(value):
            raise BadFile(f"{key} is not a whole number ({value})")
        if not INT32[0] <= value <= INT32[1]:
            raise BadFile(f"{key} is out of range ({_short(value)})")
        return int(value)
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        raise BadFile(f"{key} is out of range ({_short(value)})") from None


def _short(value: int | float) -> str:
    text = str(int(value)) if isinstance(value, int) or value == int(value) else repr(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text.lstrip('-'))} digits)"


def string(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadFile(f"{key} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFile(f"{key} is not UTF-8 (lone surrogate escape)") from None
    return value


def parse_metrics(data: bytes) -> tuple:
    """A NeMo metrics.json -> (cer, wer, ssim, pesq, codes_len, pred_transcript,
    gt_transcript), None where absent.

    The common case (floats and strings) is checked inline: this runs per file.
    """
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        obj = parse_json_object(decode_utf8(data))  # raises with the precise reason
    if type(obj) is not dict:
        raise BadFile(f"JSON is a {type(obj).__name__}, expected an object")
    get = obj.get
    out = [get(k) for k in _NUMBER_KEYS]
    for k, v in enumerate(out):
        kind = type(v)
        if v is None or (kind is float and v - v == 0.0 and k != 4) or (
                kind is int and INT32[0] <= v <= INT32[1]):
            continue  # NaN and inf fail v - v == 0; other ints are range-checked by number()
        out[k] = number(obj, _NUMBER_KEYS[k], integer=(k == 4))
    check = b"\\ud" in data or b"\\uD" in data  # a lone surrogate escape cannot be stored
    for k in _TEXT_KEYS:
        v = get(k)
        out.append(v if (v is None or type(v) is str) and not check else string(obj, k))
    return tuple(out)

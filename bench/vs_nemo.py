"""Benchmark: ttspo side by side with NeMo's own create_preference_pairs.py.

    .venv/bin/python bench/vs_nemo.py PATH/TO/NeMo/scripts/magpietts/dpo/create_preference_pairs.py

The script is not part of ttspo (read it in a NeMo checkout; it is never copied
here). It needs only tqdm, so it runs under this interpreter unless --python
names another. The bench writes a NeMo-layout corpus under --data (kept and
reused): --groups groups of 6 generations (default 20k, i.e. 120k), 8 ranks,
metrics from a seeded RNG with no exact (CER, SSIM) tie inside a group (the
script loops forever on one), 1% of groups with an <INVALID> row, durations
1-20 s; each wav is as long as its metrics' duration (silent PCM written as a
sparse file: the real length at almost no disk cost); codes are int16 [8, T]
with T ~ 21.5 frames per second. Then, in one run:

1. the script at two thresholds (its whole run: read every metrics file, rank,
   filter, write manifests for num_chosen 1 and 2);
2. ttspo's first pass from the CLI: ingest nemo, build pareto, export nemo;
3. a re-threshold (build + export at the other threshold into a new folder)
   from the CLI: two commands, start-ups included;
4. the same re-threshold from a new Python session (a 'spawn' child that
   imports ttspo first, as a notebook has): build_set + export_nemo into a new
   folder, plain calls, timed alone (what the first pass computed and kept in
   the store, STORE/.derived, is read, not computed: session_cache.py; the codes
   files are STORE/codes's, written by the first pass: the export writes
   manifests); then a few more thresholds in the same session, each into a new
   folder; then one export with --copy-codes (every codes file copied into the
   folder); then one more new session's first call at the first threshold;
5. the CLI's floor: the interpreter's start-up and `ttspo --help` (its imports).

Before each timed run the bench flushes the page cache's dirty data (os.sync,
untimed), so no contender pays for the writeback of the one before it (an export
writes ~25k codes files). It asserts that ttspo's pairs (chosen, rejected) and
rewards equal the script's num_chosen 1 manifests at both thresholds (rewards within 2.5e-7:
ttspo's normal CDF is erfcc; the script shuffles without
a seed: pairs are compared as sets, val counts by size). Prints the ratios;
targets: a re-threshold into a new folder >= 5x faster than the script from the
CLI and >= 20x in a Python session. It also asserts that the --copy-codes
folder's codes files are the bytes of the STORE/codes files the plain export's
manifests name, and that the manifests differ in the codes paths only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

GROUP, RANKS, SR, FPS = 6, 8, 22050, 21.533
SUBDIR = Path("gen") / "T5TTS" / "version_0" / "audios"  # the script writes to .../manifests
THRESHOLDS = (0.02, 0.05)     # first pass, re-threshold
MORE = (0.01, 0.03, 0.1)      # further re-thresholds in the same session
VAL_LINES = 256               # the script's --val_size counts lines; ttspo's pairs


# ------------------------------------------------------------------ corpus
def metrics_table(groups: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per generation: cer, wer, ssim, duration, invalid; no exact tie in a group."""
    rng = np.random.default_rng(seed)
    n = groups * GROUP
    cer = np.where(rng.random(n) < 0.15, 0.0, np.round(rng.exponential(0.06, n), 4))
    ssim = np.round(rng.beta(8, 3, n), 4).reshape(groups, GROUP)
    for g in np.flatnonzero([len(set(row)) < GROUP for row in ssim]):  # rare: make SSIM distinct
        ssim[g] = np.round(ssim[g] + 1e-4 * np.arange(GROUP), 4)
    ssim = ssim.reshape(n)
    # 0.02 s steps: an exact number of samples at 22050 Hz, so the wav header's
    # duration is the metrics' duration (both sides apply the 1.5-19 s filter).
    duration = np.round(rng.integers(50, 1001, n) * 0.02, 2)
    invalid = np.zeros(n, dtype=bool)
    invalid[np.flatnonzero(rng.random(groups) < 0.01) * GROUP + rng.integers(0, GROUP)] = True
    cer[invalid], ssim[invalid] = 1.0, 0.0
    return {"cer": cer, "wer": np.minimum(np.round(cer * 2.5, 4), 1.0), "ssim": ssim,
            "duration": duration, "invalid": invalid}


def silent_wav(path: Path, seconds: float) -> None:
    """16-bit mono PCM of SECONDS at SR: a real header, the data a sparse hole."""
    data = int(round(seconds * SR)) * 2
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1,
                         SR, SR * 2, 2, 16, b"data", data)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + data)


def write_files(audio: Path, lines: list[dict], m: dict[str, np.ndarray], lo: int, hi: int) -> None:
    import torch
    from nemo_layout import nemo_name

    rng = np.random.default_rng(lo)
    for line in range(lo, hi):
        silent_wav(audio / nemo_name(line, RANKS, 0), float(m["duration"][line]))
        frames = max(4, int(m["duration"][line] * FPS))
        codes = rng.integers(0, 2016, size=(8, frames), dtype=np.int16)
        torch.save(torch.from_numpy(codes), str(audio / nemo_name(line, RANKS, 1)))
        bad = bool(m["invalid"][line])
        text = lines[line]["text"].lower()
        metrics = {"cer_gt": float(m["cer"][line]), "wer_gt": float(m["wer"][line]),
                   "duration": float(m["duration"][line]), "spk_similarity": float(m["ssim"][line]),
                   "pred_transcript": "<INVALID>" if bad else text, "gt_transcript": text}
        (audio / nemo_name(line, RANKS, 2)).write_text(json.dumps(metrics))


def make_corpus(root: Path, groups: int) -> Path:
    """The NeMo layout under root (reused when complete); returns root."""
    from nemo_layout import make_records, write_manifest

    done = root / "COMPLETE"
    if done.exists() and done.read_text() == str(groups):
        return root
    shutil.rmtree(root, ignore_errors=True)
    audio = root / SUBDIR
    audio.mkdir(parents=True)
    lines = write_manifest(root / "pairs.json", make_records(groups), GROUP)
    m = metrics_table(groups)
    n, t0 = len(lines), time.time()
    # Two writer processes: torch.save of 120k small tensors is most of the cost.
    ctx = mp.get_context("spawn")
    half = (n // 2) // GROUP * GROUP
    procs = [ctx.Process(target=write_files, args=(audio, lines, m, lo, hi))
             for lo, hi in ((0, half), (half, n))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0, "corpus writer failed"
    print(f"  wrote {n} generations in {time.time() - t0:.0f} s", flush=True)
    done.write_text(str(groups))
    return root


# ---------------------------------------------------------------- contenders
def run_script(python: str, script: str, root: Path, threshold: float) -> tuple[float, Path]:
    out = root / SUBDIR.parent / "manifests"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [python, script, "--input_manifest", str(root / "pairs.json"),
           "--generated_audio_dir", str(root / SUBDIR), "--group_size", str(GROUP),
           "--cer_threshold", str(threshold), "--val_size", str(VAL_LINES)]
    log = root / f"script_{threshold}.log"
    os.sync()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"the script failed (exit {done.returncode}); see {log}")
    kept = root / f"script_{threshold}"
    shutil.rmtree(kept, ignore_errors=True)
    out.rename(kept)
    return seconds, kept


def ttspo_cli(store: Path, *args: str) -> float:
    cmd = [str(Path(sys.executable).parent / "ttspo"), "--store", str(store), *args]
    os.sync()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return seconds


def build_args(name: str, threshold: float) -> list[str]:
    return ["build", "pareto", "--name", name, "--param", f"cer_threshold={threshold}",
            "--param", f"val_size={VAL_LINES // 2}"]


def session(store: str, out: str, thresholds: list[float], queue, copy_export: bool = True) -> None:
    """A new Python session: imports first (a notebook has them), then timed calls.
    Each re-threshold exports into a new folder OUT/py_<threshold> (its manifests
    name the STORE/codes files; builder/sets/codes.py). Last, one export with
    copy_codes into OUT/py_<first>_copy (every codes file copied), timed on its own."""
    from ttspo.builder.core.store import Store
    from ttspo.builder.sets.build import build_set
    from ttspo.builder.sets.export import export_nemo

    st = Store(store)
    times = []
    for t in thresholds:
        name = f"py_{str(t).replace('.', '_')}"
        shutil.rmtree(Path(out) / name, ignore_errors=True)
        os.sync()
        t0 = time.perf_counter()
        built = build_set(st, "pareto", name, {"cer_threshold": t, "val_size": VAL_LINES // 2})
        t1 = time.perf_counter()
        exported = export_nemo(st, name, Path(out) / name)
        times.append((t, t1 - t0, time.perf_counter() - t1, built.seconds,
                      (exported.codes_written, exported.codes_reused), exported.seconds))
    if not copy_export:
        queue.put((times, None))
        return
    name = f"py_{str(thresholds[0]).replace('.', '_')}"
    shutil.rmtree(Path(out) / f"{name}_copy", ignore_errors=True)
    os.sync()
    t0 = time.perf_counter()
    exported = export_nemo(st, name, Path(out) / f"{name}_copy", copy_codes=True)
    copied = (time.perf_counter() - t0, exported.codes_copied)
    queue.put((times, copied))


def python_session(store: Path, out: Path, thresholds: list[float], copy_export: bool = True):
    ctx = mp.get_context("spawn")  # Lance is not fork-safe
    queue = ctx.Queue()
    p = ctx.Process(target=session, args=(str(store), str(out), thresholds, queue, copy_export))
    p.start()
    times = queue.get()
    p.join()
    return times


def floor(store: Path) -> dict[str, float]:
    """The CLI's fixed costs, fastest of 3: the interpreter alone, and `ttspo --help`
    (the interpreter, ttspo's CLI imports, click)."""
    ttspo = str(Path(sys.executable).parent / "ttspo")
    out = {}
    for label, cmd in (("python -c pass", [sys.executable, "-c", "pass"]),
                       ("ttspo --help", [ttspo, "--store", str(store), "--help"])):
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            runs.append(time.perf_counter() - t0)
        out[label] = min(runs)
    return out


def same_copy(named: Path, copy: Path) -> int:
    """Assert the --copy-codes folder COPY holds the bytes of the STORE/codes files
    NAMED's manifests name, and that the manifests differ in the codes paths only."""
    files = 0
    for manifest in ("dpo_train_manifest.json", "dpo_val_manifest.json"):
        a, b = read_lines(named / manifest), read_lines(copy / manifest)
        assert len(a) == len(b), manifest
        for x, y in zip(a, b):
            assert Path(y["target_audio_codes_path"]).parent == (copy / "codes").absolute()
            assert Path(x["target_audio_codes_path"]).read_bytes() == Path(y["target_audio_codes_path"]).read_bytes()
            assert {**x, "target_audio_codes_path": None} == {**y, "target_audio_codes_path": None}
            files += 1
    return files


# ---------------------------------------------------------------- same pairs
def pairs_of(lines: list[dict]) -> dict[tuple[str, str], float]:
    assert len(lines) % 2 == 0
    out = {}
    for chosen, rejected in zip(lines[0::2], lines[1::2]):
        assert chosen["reward"] == 1
        out[(chosen["audio_filepath"], rejected["audio_filepath"])] = rejected["reward"]
    return out


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_pairs(script_dir: Path, ttspo_dir: Path) -> int:
    """Assert equal pair sets, rewards within 2.5e-7 and equal val sizes; returns pairs."""
    s_val = read_lines(script_dir / "dpo_val_manifest_numchosen_per_group_1.json")
    s_train = read_lines(script_dir / "dpo_train_manifest_numchosen_per_group_1.json")
    t_val = read_lines(ttspo_dir / "dpo_val_manifest.json")
    t_train = read_lines(ttspo_dir / "dpo_train_manifest.json")
    ours, theirs = pairs_of(t_train + t_val), pairs_of(s_train + s_val)
    assert ours.keys() == theirs.keys(), (
        f"pairs differ: {len(ours.keys() - theirs.keys())} only in ttspo, "
        f"{len(theirs.keys() - ours.keys())} only in the script")
    # Rewards: the recipe's Phi is erfcc (fractional error < 1.2e-7, sql/macros.sql),
    # the script's math.erf; two Phi terms per reward.
    worst = max(abs(ours[k] - theirs[k]) for k in ours)
    assert worst < 2.5e-7, f"rejected rewards differ by up to {worst}"
    assert len(t_val) == len(s_val), (len(t_val), len(s_val))
    return len(ours)


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("script", help="NeMo's scripts/magpietts/dpo/create_preference_pairs.py")
    ap.add_argument("--groups", type=int, default=20_000, help="groups of 6 (default 20000)")
    ap.add_argument("--data", default=str(REPO / "bench" / "_data" / "vs_nemo"),
                    help="where the corpus is written and kept")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the script (needs tqdm)")
    args = ap.parse_args()

    root = Path(args.data) / f"g{args.groups}"
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    print(f"NeMo-layout corpus: {args.groups} groups x {GROUP} = {args.groups * GROUP} generations, "
          f"{RANKS} ranks, under {root}", flush=True)
    make_corpus(root, args.groups)
    for path in (root / SUBDIR).iterdir():  # warm the page cache for both sides
        with open(path, "rb") as fh:
            fh.read(4096)
    t1, t2 = THRESHOLDS

    script = {t: run_script(args.python, args.script, root, t) for t in THRESHOLDS}
    store, out = root / "store", root / "ttspo_out"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    first = {
        "ingest": ttspo_cli(store, "ingest", "nemo", str(root / "gen"), "--manifest",
                            str(root / "pairs.json"), "--run", "base", "--group-size", str(GROUP)),
        "build": ttspo_cli(store, *build_args("cli_1", t1)),
        "export": ttspo_cli(store, "export", "nemo", "cli_1", "--out", str(out / "cli_1")),
    }
    again = {"build": ttspo_cli(store, *build_args("cli_2", t2)),
             "export": ttspo_cli(store, "export", "nemo", "cli_2", "--out", str(out / "cli_2"))}
    n1 = same_pairs(script[t1][1], out / "cli_1")
    n2 = same_pairs(script[t2][1], out / "cli_2")
    py, copied = python_session(store, out, [t2, t1, *MORE])
    # a second new session: its first call finds STORE/.derived and STORE/codes as the first left them
    again_py, _ = python_session(store, out, [t1], copy_export=False)
    fixed = floor(store)
    same_pairs(script[t2][1], out / f"py_{str(t2).replace('.', '_')}")
    same_pairs(script[t1][1], out / f"py_{str(t1).replace('.', '_')}")
    py2 = f"py_{str(t2).replace('.', '_')}"
    lines = same_copy(out / py2, out / f"{py2}_copy")
    print(f"--copy-codes folder: the bytes of the STORE/codes files the manifests name ({lines} lines); "
          "manifests equal but for the codes paths")
    print(f"same pairs (and rewards within 2.5e-7) as the script's num_chosen 1 manifests: yes "
          f"({n1} pairs at cer_threshold {t1}, {n2} at {t2}; val {VAL_LINES // 2} pairs)")

    base = min(s for s, _ in script.values())
    print(f"{f'NeMo script (whole run; at {t1}, {t2}):':<47}{base:6.2f} s  "
          f"(runs: {', '.join(f'{s:.2f}' for s, _ in script.values())})")
    print(f"{'ttspo first pass, CLI (ingest+build+export):':<47}{sum(first.values()):6.2f} s  "
          f"({', '.join(f'{k} {v:.2f}' for k, v in first.items())})  "
          f"{base / sum(first.values()):.1f}x")
    print(f"{f're-threshold, CLI (build+export at {t2}):':<47}{sum(again.values()):6.2f} s  "
          f"({', '.join(f'{k} {v:.2f}' for k, v in again.items())})  "
          f"{base / sum(again.values()):.1f}x")
    for i, (t, b, e, phases, (written, kept), export_phases) in enumerate(py):
        label = "re-threshold, new Python session" if i == 0 else "  same session, again"
        label = f"{label} (at {t}):"
        parts = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
        export_parts = ", ".join(f"{k} {v:.2f}" for k, v in export_phases.items())
        print(f"{label:<47}{b + e:6.2f} s  (build {b:.2f} = {parts}; export {e:.2f} = {export_parts}; "
              f"codes files {written} written, {kept} kept)  {base / (b + e):.1f}x")
    t, b, e, phases, (written, kept), export_phases = again_py[0]
    label = f"another new session, first call (at {t}):"
    print(f"{label:<47}{b + e:6.2f} s  (build {b:.2f}; export {e:.2f}; codes files {written} written, "
          f"{kept} kept)  {base / (b + e):.1f}x")
    best = min(b + e for _, b, e, _, _, _ in py)
    print(f"ratio, re-threshold into a new folder vs the script: CLI {base / sum(again.values()):.1f}x "
          f"(target >= 5x); Python session {base / (py[0][1] + py[0][2]):.1f}x first call, "
          f"{base / best:.1f}x best (target >= 20x)")
    print(f"{f'  export at {t2} with --copy-codes (same session):':<47}{copied[0]:6.2f} s  "
          f"({copied[1]} codes files copied)")
    print("CLI floor: " + ", ".join(f"{k} {v:.2f} s" for k, v in fixed.items())
          + f"; two commands' start-up {2 * fixed['ttspo --help']:.2f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Never resume (or start, or generate) silently from a checkpoint file that is not what
was recorded: policy.pt against meta.json and its `checkpoints` row, state.pt against
meta.json's state_sha256 (issue 18, section 3).

One real tiny DPO run (checkpoints at steps 2 and 4) on a real store; each test damages
its files the way a disk or a hand does, runs the real command, and puts the bytes back.
A refusal is one line naming the damaged file and the last intact checkpoint, exit 1,
and nothing trained or written: metrics.jsonl, lineage.jsonl, the checkpoint folders and
the store's tables are as they were.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from train_helpers import SET, pattern_store, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAGE = 4096
QUICK = {"train.checkpoint_every": 2, "train.val_every": 2}


def cli_args(**extra) -> list[str]:
    return [w for o in tiny_overrides(**{**QUICK, **extra}) for w in ("-o", o)]


def invoke(store, *args):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("hashes")
    store = pattern_store(root / "store", groups=16, val_size=4)
    out = root / "run"
    done = invoke(store, "train", "dpo", SET, "--out", str(out), *cli_args(**{"train.max_steps": 4}))
    assert done.exit_code == 0, done.output
    backup = root / "backup"
    shutil.copytree(out / "checkpoints", backup, symlinks=True)
    return store, out, backup


@pytest.fixture
def run(made):
    store, out, backup = made
    yield store, out
    shutil.rmtree(out / "checkpoints")  # every test leaves the run as it was made
    shutil.copytree(backup, out / "checkpoints", symlinks=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def step(out: Path, n: int) -> Path:
    return out / "checkpoints" / f"step_{n:06d}"


def zero_a_page_per_large_tensor(path: Path) -> None:
    """A page-level disk fault: one aligned 4 KiB page of each tensor record of 8 KiB
    or more set to zero; the zip directory is untouched, so the file still loads."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" not in info.filename or info.file_size < 2 * PAGE:
                continue
            head = info.header_offset
            start = head + 30 + int.from_bytes(data[head + 26:head + 28], "little") \
                + int.from_bytes(data[head + 28:head + 30], "little")
            page = -(-start // PAGE) * PAGE
            data[page:page + PAGE] = bytes(PAGE)
    before = sha(path)
    path.write_bytes(bytes(data))
    assert sha(path) != before, "no byte changed: the test would prove nothing"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # inside the largest tensor
    data[info.header_offset + 30 + len(info.filename) + info.file_size // 2 + 64] ^= 0x01
    path.write_bytes(bytes(data))


class Unchanged:
    """What a refused command must leave as it was."""

    def __init__(self, store, out: Path):
        self.store, self.out = store, out
        self.files = {p: p.read_bytes() for p in (out / "metrics.jsonl", out / "lineage.jsonl")}
        self.folders = sorted(p.name for p in (out / "checkpoints").iterdir())
        self.versions = {t: store.version(t) for t in store.tables()}

    def check(self) -> None:
        for path, data in self.files.items():
            assert path.read_bytes() == data, f"{path.name} was written"
        assert sorted(p.name for p in (self.out / "checkpoints").iterdir()) == self.folders
        assert {t: self.store.version(t) for t in self.store.tables()} == self.versions


def refused(store, out: Path, *args) -> str:
    """Run ARGS (a resume to step 6 by default); assert one line, exit 1, nothing written."""
    before = Unchanged(store, out)
    args = args or ("train", "dpo", SET, "--out", str(out), *cli_args(**{"train.max_steps": 6}))
    result = invoke(store, *args)
    assert result.exit_code == 1, result.output
    assert len(result.output.splitlines()) == 1 and "Traceback" not in result.output, result.output
    before.check()
    return result.output


@pytest.mark.parametrize("damage", [zero_a_page_per_large_tensor, flip_a_byte])
@pytest.mark.parametrize("name", ["policy.pt", "state.pt"])
def test_a_damaged_checkpoint_file_is_never_resumed_from(run, damage, name):
    store, out = run
    damage(step(out, 4) / name)
    said = refused(store, out)
    assert said.startswith(f"Error: {step(out, 4) / name}: damaged or replaced, not used: "
                           f"sha256 {sha(step(out, 4) / name)[:16]} is not the "), said
    assert f"recorded in {step(out, 4) / 'meta.json'}" in said
    assert said.endswith(f"last intact checkpoint: {step(out, 2)}\n"), said


def test_meta_json_edited_to_match_a_replaced_file_is_caught_by_the_table_row(run):
    store, out = run
    policy, meta_path = step(out, 4) / "policy.pt", step(out, 4) / "meta.json"
    recorded = json.loads(meta_path.read_text())["sha256"]
    shutil.copyfile(step(out, 2) / "policy.pt", policy)  # other weights, a readable file
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = sha(policy)
    meta_path.write_text(json.dumps(meta))
    said = refused(store, out)
    assert said == (f"Error: {policy}: damaged or replaced, not used: sha256 {sha(policy)[:16]} "
                    f"is not the {recorded[:16]} recorded in its checkpoints row (run run, "
                    f"step 4, step); last intact checkpoint: {step(out, 2)}\n")


def test_with_every_checkpoint_damaged_none_is_intact(run):
    store, out = run
    flip_a_byte(step(out, 4) / "state.pt")
    flip_a_byte(step(out, 2) / "policy.pt")
    assert refused(store, out).endswith("last intact checkpoint: none\n")


@pytest.mark.parametrize("meta", ["{not json", json.dumps({"step": 4}), json.dumps([1]),
                                  json.dumps({"sha256": "0" * 64, "state_sha256": 7})])
def test_an_unreadable_or_incomplete_meta_json_is_one_line(run, meta):
    store, out = run
    (step(out, 4) / "meta.json").write_text(meta)
    assert refused(store, out).startswith(f"Error: {step(out, 4) / 'meta.json'}: ")


def test_a_missing_state_file_is_one_line(run):
    store, out = run
    (step(out, 4) / "state.pt").unlink()
    assert refused(store, out) == (f"Error: {step(out, 4) / 'state.pt'}: missing from its "
                                   f"checkpoint; last intact checkpoint: {step(out, 2)}\n")


@pytest.mark.parametrize("command", ["dpo --init", "precompute-ref --ref", "generate --checkpoint"])
@pytest.mark.parametrize("folder", ["step_000004", "best"])
def test_a_damaged_checkpoint_given_as_input_is_refused(run, tmp_path, command, folder):
    store, out = run
    given = out / "checkpoints" / folder / "policy.pt"  # best: a link to best_NNNNNN
    flip_a_byte(given.resolve())
    verb, flag = command.split()
    args = {"dpo": ("train", "dpo", SET, "--out", str(tmp_path / "new"), *cli_args()),
            "precompute-ref": ("train", "precompute-ref", SET, *cli_args()),
            "generate": ("generate", "--run", "g", "--samples", "1", "--embed-audio")}[verb]
    said = refused(store, out, *args, flag, str(given))
    assert said.startswith(f"Error: {given}: damaged or replaced, not used: sha256 "), said
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_given_as_input_whose_meta_was_edited_is_refused_by_its_row(run, tmp_path):
    store, out = run
    given, meta_path = step(out, 4) / "policy.pt", step(out, 4) / "meta.json"
    shutil.copyfile(step(out, 2) / "policy.pt", given)
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "sha256": sha(given)}))
    said = refused(store, out, "train", "dpo", SET, "--init", str(given),
                   "--out", str(tmp_path / "new"), *cli_args())
    assert "recorded in its checkpoints row (run run, step 4, step)" in said


def test_last_the_intact_run_resumes_and_trains_on(run):
    # The control: the same resume with nothing damaged trains steps 5 and 6.
    store, out = run
    rows = store.open("checkpoints").count_rows()
    result = invoke(store, "train", "dpo", SET, "--out", str(out), *cli_args(**{"train.max_steps": 6}))
    assert result.exit_code == 0, result.output
    assert "resuming at step 4" in result.output
    assert step(out, 6).is_dir() and store.open("checkpoints").count_rows() > rows


def test_a_state_changed_after_the_folder_was_checked_is_refused_where_it_is_read(run):
    # A second writer or a fault between the check and the read: load_state hashes
    # the very bytes it loads.
    from ttspo.builder.core.errors import InputError
    from ttspo.trainer.run import checkpoints as ckpt

    store, out = run
    flip_a_byte(step(out, 4) / "state.pt")
    with pytest.raises(InputError) as err:
        ckpt.load_state(step(out, 4), rank=0, world_size=1)
    assert str(err.value).startswith(f"{step(out, 4) / 'state.pt'}: damaged or replaced, not used")
    assert str(err.value).endswith(f"last intact checkpoint: {step(out, 2)}")


def test_generate_ranks_load_the_file_the_plan_checked(run):
    # The plan hashes (and checks) the checkpoint; each rank loads it again later:
    # a file replaced in between is refused, so the rows never name other weights.
    from ttspo.builder.core.errors import InputError
    from ttspo.builder.core.schemas import GEN
    from ttspo.trainer.generate.rows import GenerateOptions, make_rows

    store, out = run
    given = step(out, 4) / "policy.pt"
    options = GenerateOptions(run="g", checkpoint=str(given), embed_audio=True)
    checked = {GEN.checkpoint_sha256: sha(given)}
    # the same file: fine
    assert make_rows([], [], checked, [], options=options, seconds={}).num_rows == 0
    shutil.copyfile(step(out, 2) / "policy.pt", given)
    with pytest.raises(InputError, match=r"policy.pt: changed since it was checked"):
        make_rows([], [], checked, [], options=options, seconds={})


@pytest.mark.parametrize("name", ["policy.pt", "state.pt"])
def test_grpo_never_resumes_from_a_damaged_checkpoint_file(tmp_path, name):
    from ttspo.builder.core.store import Store
    from grpo_helpers import TINY as GRPO_TINY, make_prompts

    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    out = tmp_path / "run"
    grpo = lambda steps: ("train", "grpo", "--out", str(out), *[w for o in (
        *[f"policy.model.{k}={v}" for k, v in GRPO_TINY.items()], "train.progress=false",
        "train.tensorboard=false", "train.val_every=0", "grpo.rewards=length=1",
        "grpo.length_target=3", "grpo.max_decoder_steps=16", "grpo.min_valid_codes_len=1",
        "grpo.store_audio=false", "grpo.n_generations_per_item=2", "grpo.prompts_per_step=2",
        "train.checkpoint_every=1", f"train.max_steps={steps}") for w in ("-o", o)])
    assert invoke(store, *grpo(2)).exit_code == 0
    flip_a_byte(step(out, 2) / name)
    said = refused(store, out, *grpo(3))  # rollouts, checkpoints, metrics: all unchanged
    assert said.startswith(f"Error: {step(out, 2) / name}: damaged or replaced, not used: ")
    assert said.endswith(f"last intact checkpoint: {step(out, 1)}\n")


def test_a_damaged_meta_json_beside_an_intact_file_is_named_as_the_damage(run):
    # The file still matches its checkpoints row: meta.json is what changed.
    store, out = run
    meta_path = step(out, 4) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = "f" * 64
    meta_path.write_text(json.dumps(meta))
    said = refused(store, out)
    assert said == (f"Error: {meta_path}: damaged, not used: it records sha256 {'f' * 16} for "
                    f"policy.pt, whose file and its checkpoints row (run run, step 4, step) hold "
                    f"{sha(step(out, 4) / 'policy.pt')[:16]}; last intact checkpoint: "
                    f"{step(out, 2)}\n")

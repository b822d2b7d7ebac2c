"""A Lightning checkpoint (``--policy nemo:LAST.ckpt,config=MAGPIE.yaml``) is read
weights-only: a real one, as Lightning's Trainer saves it (omegaconf hyper-parameters,
loops, callbacks), loads; one carrying a pickle payload is refused with one line before
the payload can run (issue 18, section 2). Skipped unless the `nemo` extra is installed;
one module, as importing NeMo takes minutes on a loaded machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import nemo_models
from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import ModelError
from ttspo.trainer.policy.base import load_policy

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # NeMo


@pytest.fixture(scope="module", autouse=True)
def nemo_installed():
    """Skips the module unless the `nemo` extra is installed. NeMo is imported here, at
    set-up, not at collection: `pytest -m "not slow"` collects this module without it."""
    pytest.importorskip("nemo.collections.tts.models")


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def lightning(tmp_path_factory):
    """A tiny MagpieTTS, its config YAML and the checkpoint Lightning's Trainer writes."""
    import lightning.pytorch as pl
    from omegaconf import OmegaConf

    d = tmp_path_factory.mktemp("lightning")
    codec = nemo_models.save_codec(d / "codec.nemo")
    model = nemo_models.build_magpie(codec)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(str(d / "last.ckpt"))
    OmegaConf.save({"model": OmegaConf.to_container(model.cfg)}, d / "magpie.yaml")
    return {"dir": d, "codec": codec, "model": model, "ckpt": d / "last.ckpt",
            "yaml": d / "magpie.yaml"}


def spec(lt: dict, ckpt: Path) -> str:
    return f"nemo:{ckpt},config={lt['yaml']},codec={lt['codec']}"


def test_a_lightning_checkpoint_with_omegaconf_hyper_parameters_loads(lightning):
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(lightning["ckpt"]))
    assert "omegaconf.dictconfig.DictConfig" in unsafe  # what the allow-list is there for
    restored = load_policy(spec(lightning, lightning["ckpt"]))
    want = lightning["model"].state_dict()
    got = restored.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("where", ["callbacks", "hyper_parameters", "state_dict"])
def test_a_lightning_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(lightning, tmp_path,
                                                                                 where):
    marker, hostile = tmp_path / "marker", tmp_path / "hostile.ckpt"
    content = torch.load(lightning["ckpt"], weights_only=False)  # the test's own file
    if where == "hyper_parameters":
        content[where] = {"cfg": content[where], "extra": Payload(marker)}
    else:
        content[where]["payload"] = Payload(marker)
    torch.save(content, hostile)
    with pytest.raises(ModelError) as err:
        load_policy(spec(lightning, hostile))
    assert str(err.value) == (f"policy nemo:{hostile}: not a Lightning checkpoint ttspo reads, "
                              "refused (it holds posix.system, which ttspo never unpickles)")
    assert not marker.exists()
    # The CLI: one line, exit 1, and still no marker (the policy loads before the set).
    (tmp_path / "store").mkdir()
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "train", "precompute-ref",
                                      "prefs", "--policy", spec(lightning, hostile),
                                      "--ref", str(hostile)])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert result.output == f"Error: {err.value}\n"
    assert not marker.exists()

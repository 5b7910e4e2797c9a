import pytest
from omegaconf import OmegaConf

from seglearn.config import check_targets, safe_instantiate
from seglearn.errors import InputError


def test_foreign_targets_refused():
    with pytest.raises(InputError, match="os.system"):
        safe_instantiate(OmegaConf.create({"a": {"_target_": "os.system", "command": "echo hi"}}))
    with pytest.raises(InputError, match="subprocess"):
        check_targets({"x": [{"_target_": "subprocess.run"}]})


def test_own_and_standard_targets_allowed():
    check_targets({"opt": {"_target_": "torch.optim.AdamW", "lr": 1e-3},
                   "m": {"_target_": "seglearn.segment.net.SegNet"}, "f": {"_target_": "seglearn.config.to_plain"}})
    obj = safe_instantiate({"_target_": "seglearn.errors.InputError", "_args_": ["boom"]})
    assert str(obj) == "boom"


@pytest.mark.parametrize("target", [
    "seglearn.config.os.system",          # an attribute chain out of seglearn through an imported module
    "seglearn.config.importlib.import_module",
    "seglearn.runner.importlib",          # a module object, not a class or function
    "seglearn.cli.sys.exit",
    "seglearn.io.tiff.np.save",
    "seglearn.segment.api.Path",          # a foreign class re-exported by a seglearn module
    "seglearnX.anything",                 # a look-alike package
    "seglearn_evil.run",
    "seglearn",
    "seglearn.",
    "seglearn.no_such_module.thing",
    "torch.optim.AdamWX",                 # only whole allowed names
    "torch.optim.Adam.__init__",
    "lightning.pytorch.callbacks.EarlyStopping.os",
])
def test_targets_are_whole_names_defined_in_seglearn(target):
    with pytest.raises(InputError, match="_target_"):
        check_targets({"x": {"_target_": target}})


def test_checkpoint_safety(tmp_path):
    import torch

    from seglearn.ckpt import load_checkpoint, save_checkpoint

    p = save_checkpoint(tmp_path / "m.ckpt", kind="unet", state_dict={"w": torch.ones(3)}, meta={"classes": ["a", "b"]})
    ck = load_checkpoint(p, kind="unet", validate=False)  # plain data round trip; not a usable network
    assert ck["meta"]["classes"] == ["a", "b"] and torch.equal(ck["state_dict"]["w"], torch.ones(3))
    with pytest.raises(InputError, match="no network description"):
        load_checkpoint(p, kind="unet")
    with pytest.raises(InputError, match="expected 'stardist'"):
        load_checkpoint(p, kind="stardist")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.ckpt", kind="unet", state_dict={}, meta={"bad": object()})


def test_bad_checkpoints_refused(tmp_path):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from bad_inputs import make_corpus

    from seglearn.ckpt import load_checkpoint

    c = make_corpus(tmp_path / "bad")
    with pytest.raises(InputError, match="could run code"):
        load_checkpoint(c["ckpt_pickle"])
    with pytest.raises(InputError, match="version 99"):
        load_checkpoint(c["ckpt_future_version"])
    with pytest.raises(InputError, match="not a seglearn checkpoint"):
        load_checkpoint(c["ckpt_foreign"])
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(c["ckpt_garbage"])


def test_parse_pairs_reads_yaml_values_and_refuses_a_pair_without_equals():
    from seglearn.config import parse_pairs

    assert parse_pairs(["max_steps=900", "ranges={noise: [0.1, 0.2]}", "tta=dihedral"], "--set") == {
        "max_steps": 900, "ranges": {"noise": [0.1, 0.2]}, "tta": "dihedral"}
    with pytest.raises(InputError, match="--set: expected KEY=VALUE"):
        parse_pairs(["max_steps"], "--set")


def test_resolve_seed_prefers_the_section_seed_given_on_the_command_line():
    from seglearn.config import resolve_seed

    assert resolve_seed(OmegaConf.create({"seed": 4, "finetune": {"seed": 9, "lr": 1}}), "finetune") == 9
    assert resolve_seed(OmegaConf.create({"seed": 4, "finetune": {"lr": 1}}), "finetune") == 4
    assert resolve_seed(OmegaConf.create({"seed": 4}), "finetune") == 4
    assert resolve_seed(OmegaConf.create({"model": {}}), "model", default=7) == 7

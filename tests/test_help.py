"""Help that shows what a user changes (issue 27 §3): every subcommand listed, ``--help`` before the heavy imports,
``fit --help`` pointing at the class options, catvae's ``--ckpt_path``, one flag convention."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

import estimators
from catvae import tools
from catvae.cli import main


def _subcommands(parser) -> set[str]:
    names = set()
    for action in parser._actions:
        if getattr(action, "choices", None) and hasattr(action, "add_parser"):
            for name, sub in action.choices.items():
                inner = _subcommands(sub)
                names |= {f"{name} {n}" for n in inner} if inner else {name}
    return names


def test_catvae_help_lists_every_subcommand_and_estimator(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    every = _subcommands(tools.build_parser()) | {"fit", "validate", "test", "predict"}
    assert every == set(tools.SUBCOMMANDS)
    listed = [line.split("  ")[1].strip() for line in text.splitlines() if line.startswith("  ")]
    assert set(listed) == every
    assert tools.ESTIMATORS == ", ".join(estimators.available())  # the light copy of the registry
    assert main([]) == 2 and "subcommands:" in capsys.readouterr().out


def test_a_tools_help_and_argument_errors_come_before_torch_is_imported():
    code = ("import sys\nfrom catvae.cli import main\n"
            "try:\n    main(['sample', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert main(['compare', 'x.yaml', '--nosuch']) == 2\n"
            "print(sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "--ckpt_path" in out.stdout
    assert out.stderr.strip() == "catvae: error: unrecognized arguments: --nosuch (see catvae compare --help)"


def test_fit_help_says_where_the_class_options_are_and_what_ckpt_path_means(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: catvae fit [--config FILE ...]")
    assert "--model.help CategoricalVAE" in text and "--model.estimator.help ReDGECov" in text
    assert ", ".join(estimators.available()) in text
    assert "'last' = the newest run of the same --experiment_name and estimator" in text
    assert "hpc" not in text.split("--ckpt_path CKPT_PATH")[1].split("--weights_only")[0]


@pytest.mark.parametrize("spelling", ["--dry_run", "--dry-run"])
def test_tool_flags_take_lightningclis_underscores_and_hyphens_alike(spelling, tmp_path, capsys):
    spec = str(ROOT / "configs" / "compare" / "quick.yaml")
    assert main(["compare", spec, "--out", str(tmp_path / "o"), spelling, "--seeds", "0"]) == 0
    assert capsys.readouterr().out.count("catvae fit ") == 3


@pytest.mark.parametrize("given, trusted", [([], False), (["--trust_checkpoint"], True),
                                             (["--trust_checkpoint", "true"], True),
                                             (["--trust_checkpoint=false"], False)])
def test_trust_checkpoint_is_spelled_as_in_fit(given, trusted):
    args = tools.build_parser().parse_args(["sample", "--ckpt_path", "x.ckpt", *given])
    assert args.trust_checkpoint is trusted

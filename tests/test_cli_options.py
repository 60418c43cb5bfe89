"""cli/options.py: one option vocabulary across the commands, old spellings kept working."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperOption
from typer.main import get_command
from typer.testing import CliRunner

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.cli import _register, main
from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import (
    MaskRecipeOptions,
    OutputMode,
    TrainDataOptions,
    TrainNetOptions,
    legacy_json_path,
    takes_groups,
)

# The commands that make masks or deblur, and what every one of them must take.
WORKERS = ("deblur", "batch", "masks", "eval")
VOCABULARY = (
    ("--model", "-m"),
    ("--stock-masks",),
    ("--device", "-d"),
    ("--offline",),
    ("--json",),
    ("--quiet", "-q"),
    ("--verbose", "-v"),
)


def _commands() -> dict[str, Any]:
    """Every command of the app by its path ("deblur", "weights list", ...)."""
    _register()
    found: dict[str, Any] = {}

    def walk(prefix: str, group: Any) -> None:
        for name, command in group.commands.items():
            path = f"{prefix} {name}".strip()
            if hasattr(command, "commands"):
                walk(path, command)
            else:
                found[path] = command

    walk("", get_command(app))
    return found


def _options(command: Any) -> list[TyperOption]:
    return [p for p in command.params if isinstance(p, TyperOption) and "--help" not in p.opts]


def _spellings(option: TyperOption) -> tuple[str, ...]:
    return tuple(sorted(option.opts + option.secondary_opts))


def test_commands_sharing_an_option_spell_it_the_same_way() -> None:
    by_name: dict[str, dict[tuple[str, ...], list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, command in _commands().items():
        for option in _options(command):
            for name in _spellings(option):
                by_name[name][_spellings(option)].append(path)
    assert {"--json", "--device", "--stock-masks"} <= set(by_name)
    mismatched = {name: dict(forms) for name, forms in by_name.items() if len(forms) > 1}
    assert mismatched == {}


# Spellings whose help is worded per command while meaning one thing: where the command
# writes (-o), what it writes (-f), the model(s) it runs, where its masks come from.
WORDED_PER_COMMAND = {"--output", "-o", "--format", "-f", "--model", "-m", "--masks-from"}


def _meanings(commands: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Each visible spelling -> its help texts -> the commands that give it that help."""
    meanings: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, command in commands.items():
        for option in _options(command):
            if not option.hidden:  # an old spelling kept for scripts means what it meant
                for name in _spellings(option):
                    meanings[name][option.help or ""].append(path)
    return meanings


def _ambiguous(meanings: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """The spellings with two meanings (help texts), those worded per command left out."""
    return {
        name: dict(helps)
        for name, helps in meanings.items()
        if len(helps) > 1 and name not in WORDED_PER_COMMAND
    }


def test_a_shared_spelling_means_one_thing_in_every_command() -> None:
    meanings = _meanings(_commands())
    assert len(meanings["--tlc"]) == 1 and len(meanings["--device"]) == 1
    assert len(meanings["--host"]) == 1 and len(meanings["--workers"]) == 1
    assert _ambiguous(meanings) == {}


def test_the_meaning_check_catches_one_spelling_with_two_meanings() -> None:
    toy = typer.Typer()

    @toy.command("first")
    def first(workers: int = typer.Option(1, "--workers", help="Ray workers.")) -> None: ...

    @toy.command("second")
    def second(
        workers: int = typer.Option(1, "--workers", help="Data loader processes."),
        old: bool = typer.Option(False, "--tlc", hidden=True, help="Old spelling."),
        device: str = typer.Option("auto", "--device", help="Where it runs."),
    ) -> None: ...

    @toy.command("third")
    def third(
        tlc: bool = typer.Option(False, "--tlc", help="Local pooling."),
        device: str = typer.Option("auto", "--device", help="Where it runs."),
    ) -> None: ...

    group = get_command(toy)
    commands = {name: group.commands[name] for name in ("first", "second", "third")}  # type: ignore[attr-defined]
    assert _ambiguous(_meanings(commands)) == {
        "--workers": {"Ray workers.": ["first"], "Data loader processes.": ["second"]}
    }


def test_trains_old_spellings_parse_into_the_new_options() -> None:
    old = _parse("train", ["data", "-o", "run", "--workers", "0", "--tlc"])
    assert (old["workers"], old["tlc"]) == (0, True)
    new = _parse("train", ["data", "-o", "run", "--data-workers", "2", "--default-tlc"])
    assert (new["data_workers"], new["workers"], new["default_tlc"]) == (2, None, True)
    assert TrainDataOptions(workers=0).loader_workers == 0
    assert TrainDataOptions(data_workers=2).loader_workers == 2
    assert TrainNetOptions(tlc=False, default_tlc=True).registered_tlc is False
    assert TrainNetOptions(default_tlc=True).registered_tlc is True


def test_every_worker_takes_the_shared_vocabulary() -> None:
    commands = _commands()
    for path in WORKERS:
        spelled = {_spellings(option) for option in _options(commands[path])}
        for wanted in VOCABULARY:
            assert tuple(sorted(wanted)) in spelled, f"{path} lacks {wanted}"


def test_json_is_a_stdout_flag_in_every_command() -> None:
    with_json = {
        path: option
        for path, command in _commands().items()
        for option in _options(command)
        if "--json" in option.opts
    }
    assert {*WORKERS, "weights list", "weights verify"} <= set(with_json)
    for path, option in with_json.items():
        assert option.is_flag and option.default is False, path


def test_old_spellings_are_hidden_options() -> None:
    commands = _commands()
    hidden = {
        (path, name)
        for path, command in commands.items()
        for option in _options(command)
        if option.hidden
        for name in option.opts
    }
    assert {("masks", "--stock"), ("eval", "--fast-masks")} <= hidden
    assert {("train", "--workers"), ("train", "--tlc")} <= hidden
    assert {name for _, name in hidden} == {"--stock", "--fast-masks", "--workers", "--tlc"}


@pytest.mark.parametrize("command", ["masks", "eval"])
def test_hidden_spellings_stay_out_of_the_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--stock-masks" in out
    assert "--stock " not in out and "--fast-masks" not in out


def _parse(command: str, args: list[str]) -> dict[str, Any]:
    cmd = _commands()[command]
    with cmd.make_context(command, list(args)) as ctx:
        return dict(ctx.params)


def test_old_spellings_parse(tmp_path: Path) -> None:
    assert _parse("masks", ["a.png", "-o", "out", "--stock"])["stock"] is True
    assert _parse("deblur", ["a.png", "--stock"])["stock"] is True
    old_eval = _parse("eval", ["root", "--fast-masks", "-d", "cpu", "--json", "r.json"])
    assert old_eval["fast_masks"] is True and old_eval["device"] == "cpu"
    assert old_eval["json_path"] == Path("r.json") and old_eval["json"] is False
    assert _parse("eval", ["root", "--json=r.json"])["json_path"] == Path("r.json")


def test_eval_json_before_an_existing_folder_is_the_flag(tmp_path: Path) -> None:
    params = _parse("eval", ["--json", str(tmp_path), "-q"])
    assert params["json"] is True and params["json_path"] is None
    assert params["source"] == tmp_path and params["quiet"] is True
    params = _parse("eval", [str(tmp_path), "--json"])
    assert params["json"] is True and params["json_path"] is None


def test_legacy_json_path_rewrites_only_a_report_path(tmp_path: Path) -> None:
    folder = str(tmp_path)
    assert legacy_json_path(["x", "--json", "r.json"]) == ["x", "--json-out", "r.json"]
    assert legacy_json_path(["--json", folder, "r.json"]) == ["--json", folder, "r.json"]
    assert legacy_json_path(["x", "--json", "-m", "a"]) == ["x", "--json", "-m", "a"]
    assert legacy_json_path(["x", "--", "--json", "r"]) == ["x", "--", "--json", "r"]
    assert legacy_json_path(["x", "--json"]) == ["x", "--json"]


def test_eval_keeps_its_paper_defaults_and_deblur_its_own() -> None:
    eval_params = _parse("eval", ["root"])
    assert (eval_params["precision"], eval_params["tile"]) == ("fp32", "0")
    assert eval_params["tf32"] is False and eval_params["stock_masks"] is False
    deblur_params = _parse("deblur", ["a.png"])
    assert (deblur_params["precision"], deblur_params["tile"]) == ("auto", "auto")


def test_option_groups_arrive_as_objects() -> None:
    seen: list[tuple[str, MaskRecipeOptions, OutputMode]] = []
    demo = typer.Typer()

    @demo.command()
    @takes_groups
    def run(name: str, *, recipe: MaskRecipeOptions, out: OutputMode) -> None:
        seen.append((name, recipe, out))

    argv = ["photo", "--stock", "-m", "other", "--points-per-side", "8", "-q", "--json"]
    result = CliRunner().invoke(demo, argv)
    assert result.exit_code == 0, result.output
    ((name, recipe, out),) = seen
    assert name == "photo" and recipe.model == "other" and recipe.sam is None
    assert recipe.overrides() == RecipeOverrides(
        model="other", amg={"points_per_side": 8}, fast_masks=False
    )
    assert out == OutputMode(json=True, quiet=True, verbose=False)
    seen.clear()
    assert CliRunner().invoke(demo, ["photo"]).exit_code == 0
    assert seen[0][1] == MaskRecipeOptions() and seen[0][1].overrides() == RecipeOverrides()

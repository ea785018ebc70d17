"""bertspeed.training.settings: the parser generated from a dataclass; command line > file > defaults."""
import json
from dataclasses import dataclass

import pytest

from bertspeed.training.settings import parse, parser_for, setting


@dataclass(kw_only=True)
class Example:
    output_dir: str = setting(help="where results go")
    epochs: float = setting(3.0, help="passes over the data")
    batch: int | None = setting(None, help="sequences per step", aliases=("--train_batch_size",))
    inputs: list[str] = setting(["a"], help="input files")
    resume: bool = setting(False, help="continue the run")
    group_by_length: bool = setting(True, help="length-grouped batches")
    precision: str = setting("auto", help="number format", choices=("auto", "fp32", "bf16"))

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {self.epochs}")


def test_command_line_over_file_over_defaults(tmp_path):
    file = tmp_path / "s.json"
    file.write_text(json.dumps({"output_dir": "from_file", "epochs": 1.5, "inputs": ["x", "y"]}))
    s = parse(Example, ["--settings_file", str(file), "--epochs", "2", "--train_batch_size", "8", "--resume",
                        "--no-group_by_length"])
    assert (s.output_dir, s.epochs, s.batch, s.inputs, s.resume, s.group_by_length, s.precision) == (
        "from_file", 2.0, 8, ["x", "y"], True, False, "auto")
    defaults = parse(Example, ["--output_dir", "o"])
    assert (defaults.epochs, defaults.batch, defaults.inputs, defaults.resume, defaults.group_by_length) == (
        3.0, None, ["a"], False, True)
    defaults.inputs.append("b")
    assert parse(Example, ["--output_dir", "o"]).inputs == ["a"]  # list defaults are not shared


@pytest.mark.parametrize("argv, message", [
    ([], "missing required setting(s) --output_dir"),
    (["--output_dir", "o", "--epochs", "-1"], "--epochs must be >= 0, got -1.0"),
    (["--output_dir", "o", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--output_dir", "o", "--epochs", "many"], "invalid float value: 'many'"),
])
def test_bad_values_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(Example, argv, prog="example")
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_settings_files_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"output_dir": "o", "epoch": 1}))
    for path, message in ((bad, f"--settings_file {bad}: unknown setting(s) epoch"),
                          (tmp_path / "missing.json", "No such file"), (tmp_path, "")):
        with pytest.raises(SystemExit):
            parse(Example, ["--settings_file", str(path)])
        assert message in capsys.readouterr().err
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit):
        parse(Example, ["--settings_file", str(bad)])
    assert "expected a JSON object" in capsys.readouterr().err


def test_help_comes_from_the_fields():
    text = parser_for(Example, prog="example").format_help()
    for phrase in ("--output_dir OUTPUT_DIR", "where results go (required)", "passes over the data (default: 3.0)",
                   "--batch BATCH, --train_batch_size BATCH", "--group_by_length, --no-group_by_length",
                   "{auto,fp32,bf16}", "--settings_file FILE.json"):
        assert phrase in " ".join(text.split()), phrase


@dataclass(kw_only=True)
class TriState:
    lower: bool | None = setting(None, help="lower-case (default: the model folder decides)")


def test_a_bool_defaulting_to_none_has_both_switches_and_stays_unset():
    assert [parse(TriState, argv).lower for argv in ([], ["--lower"], ["--no-lower"])] == [None, True, False]


@dataclass(kw_only=True)
class OptionalValue:
    deepspeed: str | None = setting(None, help="DeepSpeed JSON, or alone as the launcher's switch", optional_value="")
    after: int = setting(1, help="a flag after it")


def test_a_flag_with_an_optional_value_takes_it_or_stands_alone():
    runs = [parse(OptionalValue, argv) for argv in ([], ["--deepspeed"], ["--deepspeed", "--after", "2"],
                                                    ["--deepspeed", "ds.json"], ["--deepspeed=x.json"])]
    assert [(s.deepspeed, s.after) for s in runs] == [(None, 1), ("", 1), ("", 2), ("ds.json", 1), ("x.json", 1)]

"""The README must not lie: every setting is documented with its real default."""

from pathlib import Path

from config.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    missing = []
    for name, field in Settings.model_fields.items():
        row = f"| `{name.upper()}` | `{field.default}` |"
        if row not in README:
            missing.append(row)
    assert not missing, f"README configuration table lacks or misstates: {missing}"


def test_ci_runs_the_test_command_of_the_readme() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "./test    # the test suite" in README
    assert "exec ./test" in ci

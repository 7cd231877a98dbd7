"""The README must not lie: its commands are what CI runs, every setting is documented."""

import re
from pathlib import Path

from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    missing = []
    for name, field in Settings.model_fields.items():
        row = f"| `{name.upper()}` | `{field.default}` |"
        if row not in README:
            missing.append(row)
    assert not missing, f"README configuration table lacks or misstates: {missing}"


def test_ci_runs_the_two_commands_of_the_readme() -> None:
    block = README.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./run", "./test"], commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "./test" in ci_lines, "CI must run the README's test command as it is written"
    assert re.search(r"^check_run .*\./run$", "\n".join(ci_lines), re.M), "CI must run the README's run command"

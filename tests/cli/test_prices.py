"""``analytics prices``: set, list, history and import against the real database.

Each test names models and tenants of its own (the commands commit).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine, text

from cli.main import cli


def seen(engine: Engine, tenant: str, model: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenant_names (tenant_id, kind, name) VALUES (:t, 'model', :m)"), {"t": tenant, "m": model}
        )


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_set_list_history_and_correction(engine: Engine) -> None:
    tenant, model = f"t-{uuid.uuid4().hex[:8]}", f"in-house-{uuid.uuid4().hex[:8]}"
    seen(engine, tenant, model)
    code, out = run("prices", "list", "--tenant", tenant)
    assert code == 0 and "UNPRICED" in out and model in out
    code, out = run(
        "prices",
        "set",
        model,
        "--input",
        "1.5",
        "--output",
        "3",
        "--from",
        "2020-01-01",
        "--reason",
        "our GPU cost",
        "--tenant",
        tenant,
    )
    assert code == 0, out
    code, out = run("prices", "list", "--tenant", tenant, "--model", model)
    assert "override" in out and "1.5" in out and "UNPRICED" not in out
    correction = ("prices", "set", model, "--input", "2", "--output", "3", "--from", "2020-01-01")
    code, out = run(*correction, "--reason", "fix", "--tenant", tenant)
    assert code != 0 and "--replace" in out
    code, out = run(*correction, "--reason", "fix", "--tenant", tenant, "--replace")
    assert code == 0, out
    code, out = run("prices", "history", "--tenant", tenant, "--model", model)
    assert out.count(model) == 2 and "superseded by" in out


def test_set_refuses_bad_input_naming_the_field_and_warns_for_unmatched_patterns() -> None:
    code, out = run("prices", "set", "x", "--input", "-1", "--output", "3", "--from", "2020-01-01", "--reason", "r")
    assert code != 0 and "input_per_mtok" in out and "negative" in out
    code, out = run(
        "prices",
        "set",
        f"nothing-{uuid.uuid4().hex}*",
        "--input",
        "1",
        "--output",
        "3",
        "--from",
        "2020-01-01",
        "--reason",
        "r",
    )
    assert code == 0 and "warning" in out and "matches no model" in out


def test_import_is_all_or_nothing_and_names_line_and_field(engine: Engine, tmp_path: Path) -> None:
    model = f"imported-{uuid.uuid4().hex[:8]}"
    good = f"model_pattern,input_per_mtok,output_per_mtok,effective_from,reason\n{model},1,2,2024-01-01,ok\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(good + f"{model}-b,1,NaN,2024-01-01,ok\n")
    code, out = run("prices", "import", str(bad))
    assert code != 0 and "line 3" in out and "output_per_mtok" in out
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM price_overrides WHERE model_pattern LIKE :m"), {"m": f"{model}%"}
            ).scalar_one()
            == 0
        )
    listing = tmp_path / "ok.json"
    listing.write_text(
        json.dumps(
            [
                {
                    "model_pattern": model,
                    "input_per_mtok": "1",
                    "output_per_mtok": 2,
                    "effective_from": "2024-01-01",
                    "reason": "ok",
                }
            ]
        )
    )
    code, out = run("prices", "import", str(listing))
    assert code == 0 and "imported 1" in out

from sqlalchemy import Engine, text


def test_migration_creates_current_and_next_month(engine: Engine) -> None:
    with engine.connect() as conn:
        names = (
            conn.execute(text("SELECT relname FROM pg_class WHERE relname LIKE 'analytics_events_2%' ORDER BY 1"))
            .scalars()
            .all()
        )
        current, following = conn.execute(
            text(
                "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM'),"
                " to_char((now() AT TIME ZONE 'UTC') + interval '1 month', 'YYYY_MM')"
            )
        ).one()
    assert f"analytics_events_{current}" in names
    assert f"analytics_events_{following}" in names

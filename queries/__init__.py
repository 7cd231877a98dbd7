"""Read models for dashboards, the API and the CLI (served from the rollups)."""

"""Prices: rate cards from the genai-prices catalog, local overrides, and the materialized rate table.

Cost is computed at query time from the rollups' token sums joined with
``cost_rates`` (pricing.rates), so a corrected price or a new override reaches
every figure, history included, as soon as it commits; ingest never reads prices.
"""

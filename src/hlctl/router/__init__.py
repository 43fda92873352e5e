"""The OpenAI-compatible, local-first router and its ledger."""

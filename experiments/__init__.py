"""Long studies (paired comparisons over seeds and items); results and commands in LEDGER.md."""

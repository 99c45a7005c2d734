"""Privacy accounting and the cross-run budget ledger."""

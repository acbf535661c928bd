"""Database access shared by the tenancy store and the ledger: engines, URLs, migrations."""

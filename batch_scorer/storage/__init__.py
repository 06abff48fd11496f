"""Storage: engines, the tool's tables, the ledger and locks; readers and writers per database."""

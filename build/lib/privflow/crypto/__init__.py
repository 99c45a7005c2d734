"""Keys and the vault: authenticated encryption of everything derived from rows."""

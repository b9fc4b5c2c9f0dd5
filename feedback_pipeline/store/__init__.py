"""The feedback store: schema migrations and typed access, for PostgreSQL and SQLite."""

"""Getting feedback into the store: record validation, file importers and the HTTP endpoint."""

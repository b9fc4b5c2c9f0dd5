"""The thin Dagster layer: assets call the plain modules, resources own connections and paths."""

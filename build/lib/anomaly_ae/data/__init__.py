"""Data modules: one file per data source."""

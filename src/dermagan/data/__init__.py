"""Raw HAM10000 ingestion, lesion-grouped splits and the prepared array files."""

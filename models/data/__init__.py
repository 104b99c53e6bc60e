"""models/data."""

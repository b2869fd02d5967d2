"""The evidence store: the only code that opens the station database or speaks SQL."""

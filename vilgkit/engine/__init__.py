"""The training engine and the stage runner."""

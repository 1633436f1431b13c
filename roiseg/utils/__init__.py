"""Small shared helpers: atomic file writes, logging and progress bars."""

"""Shopping Guide operator."""

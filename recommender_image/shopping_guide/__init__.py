"""Shopping Guide recommender: trainer and HTTP server."""

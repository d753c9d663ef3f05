"""The recommender HTTP server: models side by side, sticky cohorts, hot reload, metrics."""

"""A node agent that runs the pods bound to it as local processes (see README.md here)."""

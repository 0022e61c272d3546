"""The engine: one hit's events through the container, and the operations built on it."""

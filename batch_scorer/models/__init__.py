"""Models: loading a file safely, what a fitted model reveals, scoring with it."""

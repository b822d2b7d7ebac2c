"""Recipe files (*.sql) for `ttspo build`. Shipped as package data."""

"""Server-rendered pages: templates, static files and the store index."""

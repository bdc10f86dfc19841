"""The worker: claims due work from the database and runs each domain's handlers."""

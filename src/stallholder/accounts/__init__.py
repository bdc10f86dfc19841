"""Platform admin, creators, API keys and customers."""

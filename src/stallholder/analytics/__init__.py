"""Analytics: revenue, MRR and active subscribers over time for the creator dashboard
(``metrics.py`` is pure; ``service.py`` reads the rows and applies it)."""

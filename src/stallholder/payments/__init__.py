"""Payment gateways, payment attempts and card-data refusal."""

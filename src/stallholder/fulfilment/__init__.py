"""Getting physical goods to buyers: shipping rates, addresses, (later) shipments."""
